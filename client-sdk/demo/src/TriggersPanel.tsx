import { useCallback, useEffect, useState } from 'react'
import type { Schemas } from '@resonant/client'
import { useBroadcastEvent, useEventListener } from '@resonant/react'
import { errorText, isPanelEvent, timeAgo, useDemo } from './nav'

type Trigger = Schemas['Trigger']
type Secret = Schemas['SecretInfo']

/** The browser's time zone: a new schedule's default. */
const LOCAL_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'

/** A fire time as the schedule's own clock reads it (its time zone named). */
export function fireTime(ms: number, timeZone: string): string {
  try {
    return new Intl.DateTimeFormat(undefined, {
      timeZone,
      weekday: 'short',
      month: 'short',
      day: 'numeric',
      hour: '2-digit',
      minute: '2-digit',
      timeZoneName: 'short',
    }).format(ms)
  } catch {
    return new Date(ms).toISOString()
  }
}

/** A trigger's name, or its kind when it has none. */
export function triggerLabel(t: Trigger): string {
  return t.name || (t.kind === 'webhook' ? 'Webhook' : 'Schedule')
}

/** Copies `text`; says "Copied" for a moment, or why it could not. */
function CopyButton({ text, testid }: { text: string; testid: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle')
  useEffect(() => {
    if (state === 'idle') return
    const t = setTimeout(() => setState('idle'), 2000)
    return () => clearTimeout(t)
  }, [state])
  return (
    <button
      type="button"
      className="small"
      data-testid={testid}
      data-state={state}
      onClick={() => {
        const p = navigator.clipboard?.writeText(text)
        if (!p) return setState('failed')
        p.then(
          () => setState('copied'),
          () => setState('failed'),
        )
      }}
    >
      {state === 'copied' ? 'Copied' : state === 'failed' ? 'Copy failed: select it' : 'Copy'}
    </button>
  )
}

/**
 * What starts this workflow without an editor: webhook URLs (with their secret) and cron
 * schedules, and the workspace's secrets that webhook blocks send. Triggers run the published
 * version unless set to run the draft.
 */
export function TriggersPanel({ workflowId }: { workflowId: string }) {
  const { rest } = useDemo()
  const [triggers, setTriggers] = useState<Trigger[] | null>(null)
  const [workflow, setWorkflow] = useState<Schemas['Workflow'] | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [busy, setBusy] = useState<string | null>(null)
  const broadcast = useBroadcastEvent()

  const refresh = useCallback(async () => {
    try {
      const [list, wf] = await Promise.all([rest.triggers.list(workflowId), rest.workflows.get(workflowId)])
      setTriggers(list.items)
      setWorkflow(wf)
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest, workflowId])

  useEffect(() => {
    void refresh()
  }, [refresh])
  useEventListener((e) => {
    if (isPanelEvent(e, 'triggers-changed') || isPanelEvent(e, 'versions-changed')) void refresh()
  })

  /** Runs one change; the list reloads here and at the other editors. */
  const act = async (what: string, f: () => Promise<unknown>) => {
    setBusy(what)
    setError(null)
    try {
      await f()
      broadcast({ kind: 'triggers-changed' })
      await refresh()
    } catch (e) {
      setError(errorText(e))
    } finally {
      setBusy(null)
    }
  }

  const runsPublished = triggers?.some((t) => t.target === 'published')
  return (
    <>
      <section className="panel triggers" data-testid="triggers-panel">
        <h2>Triggers</h2>
        <p className="muted small">
          {workflow?.publishedVersionId
            ? 'A version is published: triggers set to “published” run it.'
            : 'No version is published yet (Versions tab).'}
          {!workflow?.publishedVersionId && runsPublished && (
            <span className="problem"> Triggers set to “published” start nothing until one is.</span>
          )}
        </p>
        {error && <p className="problem" data-testid="triggers-error">{error}</p>}
        {triggers?.length === 0 && <p className="muted small" data-testid="no-triggers">No triggers yet.</p>}
        <ul className="trigger-list">
          {triggers?.map((t) => (
            <TriggerItem key={t.id} trigger={t} busy={busy} act={act} />
          ))}
        </ul>
        <NewTrigger workflowId={workflowId} busy={busy} act={act} />
      </section>
      {workflow && <SecretsSection workspaceId={workflow.workspaceId} />}
    </>
  )
}

type Act = (what: string, f: () => Promise<unknown>) => Promise<void>

function TriggerItem({ trigger: t, busy, act }: { trigger: Trigger; busy: string | null; act: Act }) {
  const { rest } = useDemo()
  const [confirm, setConfirm] = useState<'rotate' | 'delete' | null>(null)
  const [reveal, setReveal] = useState(false)
  const tz = t.timezone ?? 'UTC'
  return (
    <li data-testid={`trigger-${t.id}`} data-kind={t.kind} className={t.enabled ? undefined : 'disabled'}>
      <div className="trigger-head">
        <span className="trigger-name">{triggerLabel(t)}</span>
        <span className="chip">{t.kind}</span>
        <span className="chip" title="What it runs">{t.target === 'draft' ? 'draft' : 'published'}</span>
        <label className="toggle small" title="Whether it fires">
          <input
            type="checkbox"
            data-testid={`trigger-enabled-${t.id}`}
            checked={t.enabled}
            disabled={busy !== null}
            onChange={(e) => void act(`enable-${t.id}`, () => rest.triggers.update(t.id, { enabled: e.target.checked }))}
          />
          on
        </label>
      </div>
      {t.kind === 'webhook' && (
        <>
          <div className="copy-row">
            <span className="muted small">URL</span>
            <input readOnly className="mono" data-testid={`trigger-url-${t.id}`} value={t.url ?? ''} onFocus={(e) => e.target.select()} />
            {t.url && <CopyButton text={t.url} testid={`copy-url-${t.id}`} />}
          </div>
          <div className="copy-row">
            <span className="muted small">Secret</span>
            {t.secret ? (
              <>
                <input
                  readOnly
                  className="mono"
                  data-testid={`trigger-secret-${t.id}`}
                  type={reveal ? 'text' : 'password'}
                  value={t.secret}
                  onFocus={(e) => e.target.select()}
                />
                <button type="button" className="small" onClick={() => setReveal(!reveal)}>
                  {reveal ? 'Hide' : 'Show'}
                </button>
                <CopyButton text={t.secret} testid={`copy-secret-${t.id}`} />
              </>
            ) : (
              <span className="mono small">…{t.secretLast4}</span>
            )}
          </div>
          <p className="muted small">
            POST with{' '}
            {t.auth === 'bearer' ? (
              <code>Authorization: Bearer &lt;secret&gt;</code>
            ) : (
              <code>X-Resonant-Signature: t=&lt;unix s&gt;,v1=&lt;hex HMAC-SHA256(secret, "t.body")&gt;</code>
            )}
            ; <code>?wait=true</code> answers with the result.
          </p>
        </>
      )}
      {t.kind === 'schedule' && (
        <>
          <div className="small">
            <code>{t.cron}</code> · {tz} · missed runs: {t.missed === 'run-once' ? 'run once' : 'skip'}
          </div>
          {t.nextFireTimes.length > 0 ? (
            <ol className="next-fires small" data-testid={`next-fires-${t.id}`}>
              {t.nextFireTimes.map((ms) => (
                <li key={ms}>{fireTime(ms, tz)}</li>
              ))}
            </ol>
          ) : (
            <p className="muted small">{t.enabled ? 'No upcoming run.' : 'Off: no upcoming run.'}</p>
          )}
        </>
      )}
      {t.lastFiredAt != null && (
        <div className="muted small" title={new Date(t.lastFiredAt).toLocaleString()}>
          Last fired {timeAgo(t.lastFiredAt)}
        </div>
      )}
      {t.lastError && (
        <div className="problem" data-testid={`trigger-error-${t.id}`}>
          Last firing started nothing: {t.lastError}
        </div>
      )}
      {confirm ? (
        <div className="confirm">
          <span className="small">
            {confirm === 'rotate' ? 'The current secret stops working at once.' : 'Delete this trigger? Its runs stay in the history.'}
          </span>
          <button
            className={confirm === 'delete' ? 'danger' : 'primary'}
            data-testid={`confirm-${confirm}-${t.id}`}
            onClick={() => {
              setConfirm(null)
              void act(`${confirm}-${t.id}`, () => (confirm === 'rotate' ? rest.triggers.rotateSecret(t.id) : rest.triggers.delete(t.id)))
            }}
          >
            {confirm === 'rotate' ? 'Rotate' : 'Delete'}
          </button>
          <button onClick={() => setConfirm(null)}>Cancel</button>
        </div>
      ) : (
        <div className="comment-actions">
          {t.kind === 'webhook' && t.secret && (
            <button className="small" data-testid={`rotate-${t.id}`} disabled={busy !== null} onClick={() => setConfirm('rotate')}>
              {busy === `rotate-${t.id}` ? 'Rotating…' : 'Rotate secret…'}
            </button>
          )}
          <button className="small danger" data-testid={`delete-trigger-${t.id}`} disabled={busy !== null} onClick={() => setConfirm('delete')}>
            Delete…
          </button>
        </div>
      )}
    </li>
  )
}

function timeZones(): string[] {
  const f = (Intl as { supportedValuesOf?: (k: string) => string[] }).supportedValuesOf
  return f ? f('timeZone') : []
}

function NewTrigger({ workflowId, busy, act }: { workflowId: string; busy: string | null; act: Act }) {
  const { rest } = useDemo()
  const [kind, setKind] = useState<'webhook' | 'schedule'>('webhook')
  const [name, setName] = useState('')
  const [target, setTarget] = useState<'published' | 'draft'>('published')
  const [auth, setAuth] = useState<'hmac' | 'bearer'>('hmac')
  const [cron, setCron] = useState('0 9 * * 1-5')
  const [timezone, setTimezone] = useState(LOCAL_TZ)
  const [missed, setMissed] = useState<'skip' | 'run-once'>('skip')
  const [zones] = useState(timeZones)

  const create = () =>
    act('create', async () => {
      const common = { name: name.trim() || null, target }
      await rest.triggers.create(
        workflowId,
        kind === 'webhook' ? { kind, auth, ...common } : { kind, cron: cron.trim(), timezone: timezone.trim() || 'UTC', missed, ...common },
      )
      setName('')
    })

  return (
    <form
      className="new-trigger"
      onSubmit={(e) => {
        e.preventDefault()
        void create()
      }}
    >
      <h3>New trigger</h3>
      <div className="grid2">
        <label className="field">
          <span>Kind</span>
          <select data-testid="trigger-kind" value={kind} onChange={(e) => setKind(e.target.value as typeof kind)}>
            <option value="webhook">Webhook</option>
            <option value="schedule">Schedule</option>
          </select>
        </label>
        <label className="field">
          <span>Runs</span>
          <select data-testid="trigger-target" value={target} onChange={(e) => setTarget(e.target.value as typeof target)}>
            <option value="published">published version</option>
            <option value="draft">draft (live document)</option>
          </select>
        </label>
      </div>
      <label className="field">
        <span>Name (optional)</span>
        <input data-testid="trigger-name" maxLength={200} value={name} onChange={(e) => setName(e.target.value)} />
      </label>
      {kind === 'webhook' ? (
        <label className="field">
          <span>Authentication</span>
          <select data-testid="trigger-auth" value={auth} onChange={(e) => setAuth(e.target.value as typeof auth)}>
            <option value="hmac">HMAC signature (X-Resonant-Signature)</option>
            <option value="bearer">Bearer secret (Authorization)</option>
          </select>
        </label>
      ) : (
        <>
          <label className="field">
            <span>Cron (minute hour day month weekday; 6 fields: seconds first)</span>
            <input data-testid="trigger-cron" className="mono" value={cron} onChange={(e) => setCron(e.target.value)} />
          </label>
          <div className="grid2">
            <label className="field">
              <span>Time zone</span>
              <input data-testid="trigger-timezone" list="time-zones" value={timezone} onChange={(e) => setTimezone(e.target.value)} />
              <datalist id="time-zones">
                {zones.map((z) => (
                  <option key={z} value={z} />
                ))}
              </datalist>
            </label>
            <label className="field">
              <span>Missed while down</span>
              <select data-testid="trigger-missed" value={missed} onChange={(e) => setMissed(e.target.value as typeof missed)}>
                <option value="skip">skip</option>
                <option value="run-once">run once</option>
              </select>
            </label>
          </div>
        </>
      )}
      <button type="submit" className="primary" data-testid="create-trigger" disabled={busy !== null}>
        {busy === 'create' ? 'Creating…' : kind === 'webhook' ? 'Create webhook' : 'Create schedule'}
      </button>
    </form>
  )
}

/** The workspace's secrets by name; values can be set or replaced, never read back. */
function SecretsSection({ workspaceId }: { workspaceId: string }) {
  const { rest } = useDemo()
  const [secrets, setSecrets] = useState<Secret[] | null>(null)
  const [name, setName] = useState('')
  const [value, setValue] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)

  const refresh = useCallback(async () => {
    try {
      setSecrets((await rest.secrets.list(workspaceId)).items)
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest, workspaceId])
  useEffect(() => {
    void refresh()
  }, [refresh])

  const run = async (f: () => Promise<unknown>) => {
    setBusy(true)
    setError(null)
    try {
      await f()
      await refresh()
    } catch (e) {
      setError(errorText(e))
    } finally {
      setBusy(false)
    }
  }
  const replacing = secrets?.some((s) => s.name === name.trim())

  return (
    <section className="panel secrets" data-testid="secrets-panel">
      <h2>Workspace secrets</h2>
      <p className="muted small">
        Webhook blocks send them as <code>{'{{ secrets.NAME }}'}</code>. Values are write-only: once saved they are never shown
        again, only replaced or deleted.
      </p>
      {error && <p className="problem" data-testid="secrets-error">{error}</p>}
      {secrets?.length === 0 && <p className="muted small">No secrets yet.</p>}
      <ul className="secret-list">
        {secrets?.map((s) => (
          <li key={s.name} data-testid={`secret-${s.name}`}>
            <code>{s.name}</code>
            <span className="muted small" title={new Date(s.updatedAt).toLocaleString()}>
              set {timeAgo(s.updatedAt)}
            </span>
            <button className="small" disabled={busy} onClick={() => (setName(s.name), setValue(''))}>
              Replace
            </button>
            <button
              className="small danger"
              data-testid={`delete-secret-${s.name}`}
              disabled={busy}
              onClick={() => void run(() => rest.secrets.delete(workspaceId, s.name))}
            >
              Delete
            </button>
          </li>
        ))}
      </ul>
      <form
        className="secret-form"
        onSubmit={(e) => {
          e.preventDefault()
          void run(async () => {
            await rest.secrets.set(workspaceId, name.trim(), value)
            setName('')
            setValue('')
          })
        }}
      >
        <input data-testid="secret-name" placeholder="NAME" className="mono" maxLength={64} value={name} onChange={(e) => setName(e.target.value)} />
        <input
          data-testid="secret-value"
          type="password"
          autoComplete="off"
          placeholder="value"
          value={value}
          onChange={(e) => setValue(e.target.value)}
        />
        <button type="submit" className="primary" data-testid="save-secret" disabled={busy || !name.trim() || !value}>
          {replacing ? 'Replace' : 'Add'}
        </button>
      </form>
    </section>
  )
}
