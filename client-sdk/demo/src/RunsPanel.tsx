import { useCallback, useEffect, useMemo, useRef, useState } from 'react'
import type { ExecutionHandle, ExecutionStatus, Schemas } from '@resonant/client'
import { useEventListener, useExecution, useExecutions } from '@resonant/react'
import { errorText, isPanelEvent, timeAgo, useDemo } from './nav'
import { triggerLabel } from './TriggersPanel'

type Execution = Schemas['Execution']
type Trigger = Schemas['Trigger']

const STATUSES: ExecutionStatus[] = ['pending', 'running', 'completed', 'failed', 'cancelled']

/** What a row shows of a run: the stored row, or (until the list has it) what the socket told. */
interface RunInfo {
  id: string
  status: string
  startedAt: number
  durationMs?: number | null
  tokensUsed?: number
  costUsd?: number
  /** undefined: not known yet (a run seen live before the list has it). */
  triggerId?: string | null
  error?: string | null
}

export function duration(ms: number | null | undefined): string {
  if (ms == null) return '—'
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`
}

/**
 * The run history: every execution of the workflow, newest first, whoever or whatever started
 * it (an editor, a webhook, a schedule), with its trigger, status, duration, tokens and cost.
 * Runs go live: the room's execution events move their status as they happen, and a run that
 * starts elsewhere (a hook call) appears without a reload.
 */
export function RunsPanel({ workflowId }: { workflowId: string }) {
  const { rest } = useDemo()
  const handles = useExecutions()
  const [status, setStatus] = useState('')
  const [trigger, setTrigger] = useState('')
  const [items, setItems] = useState<Execution[] | null>(null)
  const [next, setNext] = useState<string | null>(null)
  const [triggers, setTriggers] = useState<Trigger[]>([])
  const [error, setError] = useState<string | null>(null)
  const generation = useRef(0)
  /** Whether older pages were loaded since the filters last changed. */
  const pagedOn = useRef(false)

  const loadTriggers = useCallback(async () => {
    try {
      setTriggers((await rest.triggers.list(workflowId)).items)
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest, workflowId])

  /** The first page again; older pages already loaded stay below it. */
  const refresh = useCallback(async () => {
    const mine = ++generation.current
    try {
      const page = await rest.executions.list(workflowId, { limit: 50, status: status || undefined, triggerId: trigger || undefined })
      if (mine !== generation.current) return
      setItems((prev) => {
        const ids = new Set(page.items.map((e) => e.id))
        const oldest = page.items.at(-1)?.startedAt ?? Infinity
        return [...page.items, ...(prev ?? []).filter((e) => !ids.has(e.id) && e.startedAt < oldest)]
      })
      // After "Older runs", the cursor to go on from is that of the last page loaded.
      if (!pagedOn.current) setNext(page.nextCursor ?? null)
      setError(null)
    } catch (e) {
      if (mine === generation.current) setError(errorText(e))
    }
  }, [rest, workflowId, status, trigger])

  // A filter changed: start over.
  useEffect(() => {
    setItems(null)
    setNext(null)
    pagedOn.current = false
    void refresh()
  }, [refresh])
  useEffect(() => {
    void loadTriggers()
  }, [loadTriggers])
  useEventListener((e) => {
    if (isPanelEvent(e, 'triggers-changed')) void loadTriggers()
  })

  // A run new to the room (started here, by another editor or by a trigger): load the list
  // again to learn its trigger; and again when it ends, for its final numbers and the filters.
  const latestRefresh = useRef(refresh)
  latestRefresh.current = refresh
  const seen = useRef(new Set<string>())
  useEffect(() => {
    let fresh = false
    for (const h of handles) {
      if (seen.current.has(h.id)) continue
      seen.current.add(h.id)
      fresh = true
      void h.done.then(() => latestRefresh.current())
    }
    if (fresh) void latestRefresh.current()
  }, [handles])

  // A run from a trigger this panel does not know yet (created by another editor).
  useEffect(() => {
    const known = new Set(triggers.map((t) => t.id))
    if (items?.some((e) => e.triggerId && !known.has(e.triggerId))) void loadTriggers()
    // Only when the runs change (`triggers` changing is the answer to this).
  }, [items, loadTriggers])

  const loadMore = async () => {
    if (!next) return
    try {
      const page = await rest.executions.list(workflowId, { limit: 50, cursor: next, status: status || undefined, triggerId: trigger || undefined })
      pagedOn.current = true
      setItems((prev) => [...(prev ?? []), ...page.items.filter((e) => !prev?.some((p) => p.id === e.id))])
      setNext(page.nextCursor ?? null)
    } catch (e) {
      setError(errorText(e))
    }
  }

  const byHandle = useMemo(() => new Map(handles.map((h) => [h.id, h])), [handles])
  const triggerById = useMemo(() => new Map(triggers.map((t) => [t.id, t])), [triggers])
  // Runs the room knows that the list does not have yet, newest first.
  const listed = new Set(items?.map((e) => e.id))
  const pending: RunInfo[] = trigger
    ? []
    : handles
        .filter((h) => !listed.has(h.id))
        .reverse()
        .map((h) => ({ id: h.id, status: h.state().status, startedAt: Date.now() }))
  const rows: RunInfo[] = [...pending, ...(items ?? [])]

  return (
    <section className="panel runs" data-testid="runs-panel">
      <h2>Run history</h2>
      <div className="grid2">
        <label className="field">
          <span>Status</span>
          <select data-testid="runs-status" value={status} onChange={(e) => setStatus(e.target.value)}>
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <label className="field">
          <span>Trigger</span>
          <select data-testid="runs-trigger" value={trigger} onChange={(e) => setTrigger(e.target.value)}>
            <option value="">all</option>
            <option value="manual">manual</option>
            {triggers.map((t) => (
              <option key={t.id} value={t.id}>
                {triggerLabel(t)} ({t.kind})
              </option>
            ))}
          </select>
        </label>
      </div>
      {error && <p className="problem" data-testid="runs-error">{error}</p>}
      {items === null && !error && <p className="muted small">Loading…</p>}
      {items !== null && rows.length === 0 && <p className="muted small" data-testid="no-runs">No runs{status || trigger ? ' match' : ' yet'}.</p>}
      <ol className="run-list">
        {rows.map((r) => (
          <RunRow key={r.id} run={r} handle={byHandle.get(r.id)} trigger={r.triggerId ? triggerById.get(r.triggerId) : undefined} statusFilter={status} />
        ))}
      </ol>
      {next && (
        <button className="small" data-testid="runs-more" onClick={() => void loadMore()}>
          Older runs
        </button>
      )}
    </section>
  )
}

function RunRow({ run, handle, trigger, statusFilter }: { run: RunInfo; handle?: ExecutionHandle; trigger?: Trigger; statusFilter: string }) {
  // The room's live state once it has heard of the run; the stored row before that.
  const live = useExecution(handle)
  const heard = live !== undefined && live.seq > 0
  const status = heard ? live.status : run.status
  if (statusFilter && status !== statusFilter && run.triggerId === undefined) return null
  const ended = status === 'completed' || status === 'failed' || status === 'cancelled'
  const durationMs = heard && live.durationMs !== undefined ? live.durationMs : run.durationMs
  const tokens = heard && live.tokens !== undefined ? live.tokens : run.tokensUsed
  const cost = heard && live.costUsd !== undefined ? live.costUsd : run.costUsd
  const failure = (heard ? live.error : undefined) ?? run.error
  let who: string
  if (run.triggerId === undefined) who = '…'
  else if (run.triggerId === null) who = 'manual'
  else who = trigger ? triggerLabel(trigger) : 'deleted trigger'
  return (
    <li data-testid={`run-${run.id}`} data-status={status}>
      <div className="run-head">
        <span className={`badge status-${status}`} data-testid={`run-status-${run.id}`}>
          {status}
        </span>
        <span className="run-trigger" data-testid={`run-trigger-${run.id}`}>
          {who}
          {trigger && <span className="chip">{trigger.kind}</span>}
        </span>
        <span className="muted small" title={new Date(run.startedAt).toLocaleString()}>
          {timeAgo(run.startedAt)}
        </span>
      </div>
      <div className="muted small run-numbers">
        {ended ? duration(durationMs) : 'running…'} · {tokens ?? 0} tokens · ${(cost ?? 0).toFixed(4)}
      </div>
      {failure && status === 'failed' && <div className="problem">{failure}</div>}
    </li>
  )
}
