import type { ExecutionRequest } from './protocol.js'
import type {
  BlockRunState,
  ExecutionEvent,
  ExecutionState,
  ExecutionStatus,
  Unsubscribe,
} from './types.js'

/** What an execution handle needs from its room. */
export interface ExecutionHost {
  request(msg: ExecutionRequest): Promise<Record<string, unknown>>
  /** Asks the server for the events after `seq` (a gap, or attaching). */
  resume(executionId: string, afterSeq: number): void
  /** Opens a handle for another execution (a re-run). */
  handleFor(executionId: string): ExecutionHandle
  /** Schedules a notification flush on the next animation frame. */
  schedule(flush: () => void): void
  /** An event was applied (a replay is making progress). */
  progressed?(): void
}

/** A live execution: its folded state, kept exact by `seq` (no duplicate, no gap). */
export interface ExecutionHandle {
  /** The execution's id. */
  readonly id: string
  /** The current state; the same object until it changes. */
  state(): ExecutionState
  /** Calls `cb` after changes, at most once per animation frame. */
  subscribe(cb: (s: ExecutionState) => void): Unsubscribe
  /** Resolves when the execution completes, fails or is cancelled. */
  readonly done: Promise<ExecutionState>
  /** Asks the server to cancel it. */
  cancel(): Promise<void>
  /** Approves a waiting `human` block (its key inside a loop). */
  approve(blockId: string, comment?: string): Promise<void>
  /** Rejects a waiting `human` block. */
  reject(blockId: string, comment?: string): Promise<void>
  /** Starts a re-run from `fromBlock` (default: the failed block). */
  rerun(fromBlock?: string): Promise<ExecutionHandle>
}

const TERMINAL: ReadonlySet<ExecutionStatus> = new Set(['completed', 'failed', 'cancelled'])

/** The handle implementation: applies events in seq order and buffers what comes early. */
export class Execution implements ExecutionHandle {
  private current: ExecutionState
  private early = new Map<number, ExecutionEvent>()
  private listeners = new Set<(s: ExecutionState) => void>()
  private dirty = false
  private resolveDone!: (s: ExecutionState) => void
  /** Resolves when the execution ends. */
  readonly done: Promise<ExecutionState>
  /** True while a replay for a gap is outstanding. */
  gapRequested = false
  /** Events dropped as duplicates (tests and diagnostics). */
  duplicates = 0

  constructor(
    readonly id: string,
    private readonly host: ExecutionHost,
    afterSeq = 0,
  ) {
    this.current = { id, status: 'pending', seq: afterSeq, blocks: {}, events: [] }
    this.done = new Promise((r) => (this.resolveDone = r))
  }

  state(): ExecutionState {
    return this.current
  }

  /** Whether the execution has ended. */
  get finished(): boolean {
    return TERMINAL.has(this.current.status)
  }

  subscribe(cb: (s: ExecutionState) => void): Unsubscribe {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }

  /** Applies one event: a duplicate is dropped, an early one waits for the gap to fill. */
  receive(ev: ExecutionEvent) {
    if (ev.seq <= this.current.seq || this.early.has(ev.seq)) {
      this.duplicates++
      return
    }
    if (ev.seq > this.current.seq + 1) {
      this.early.set(ev.seq, ev)
      if (!this.gapRequested) {
        this.gapRequested = true
        this.host.resume(this.id, this.current.seq)
      }
      return
    }
    let next = fold(this.current, ev)
    for (let s = next.seq + 1; this.early.has(s); s++) {
      const e = this.early.get(s)!
      this.early.delete(s)
      next = fold(next, e)
    }
    if (this.early.size === 0) this.gapRequested = false
    this.host.progressed?.()
    this.current = next
    if (!this.dirty) {
      this.dirty = true
      this.host.schedule(() => this.notify())
    }
    if (TERMINAL.has(next.status)) this.resolveDone(next)
  }

  private notify() {
    this.dirty = false
    for (const l of [...this.listeners]) {
      try {
        l(this.current)
      } catch (e) {
        queueMicrotask(() => {
          throw e
        })
      }
    }
  }

  async cancel() {
    await this.host.request({ type: 'execution.cancel', executionId: this.id })
  }

  async approve(blockId: string, comment?: string) {
    await this.host.request({ type: 'execution.decide', executionId: this.id, blockId, approved: true, comment })
  }

  async reject(blockId: string, comment?: string) {
    await this.host.request({ type: 'execution.decide', executionId: this.id, blockId, approved: false, comment })
  }

  async rerun(fromBlock?: string): Promise<ExecutionHandle> {
    const reply = await this.host.request({ type: 'execution.rerun', executionId: this.id, fromBlock })
    return this.host.handleFor(reply.executionId as string)
  }
}

function blockKey(ev: ExecutionEvent): string {
  return ev.scope ? `${ev.scope}/${ev.blockId}` : (ev.blockId as string)
}

const UNFINISHED: ReadonlySet<BlockRunState['status']> = new Set(['pending', 'running', 'retrying', 'waiting'])

/**
 * Ends every unfinished block when the execution ends: the server sends no per-block event for
 * blocks it stopped, and without this they showed "running" or "waiting" (with live Approve
 * buttons) forever after a cancel or a failure.
 */
function settle(blocks: Record<string, BlockRunState>, status: 'cancelled'): Record<string, BlockRunState> {
  let out: Record<string, BlockRunState> | null = null
  for (const [key, b] of Object.entries(blocks)) {
    if (!UNFINISHED.has(b.status)) continue
    out ??= { ...blocks }
    out[key] = { ...b, status, waiting: undefined }
  }
  return out ?? blocks
}

/** Folds one event into a new state object (the old one is left untouched). */
export function fold(s: ExecutionState, ev: ExecutionEvent): ExecutionState {
  // The log is append-only and shared by successive states (copying it per event would make a
  // long run quadratic); `seq` tells states apart.
  s.events.push(ev)
  const next: ExecutionState = { ...s, seq: ev.seq }
  const setBlock = (patch: Partial<BlockRunState>) => {
    const key = blockKey(ev)
    const prev: BlockRunState = s.blocks[key] ?? { status: 'pending', text: '', attempt: 1 }
    next.blocks = { ...s.blocks, [key]: { ...prev, ...patch } }
  }
  switch (ev.type) {
    case 'execution.started':
      next.status = 'running'
      break
    case 'execution.completed':
      next.status = 'completed'
      next.outputs = ev.outputs as Record<string, unknown>
      break
    case 'execution.failed':
      next.status = 'failed'
      next.error = ev.error as string
      next.blocks = settle(s.blocks, 'cancelled')
      break
    case 'execution.cancelled':
      next.status = 'cancelled'
      next.blocks = settle(s.blocks, 'cancelled')
      break
    case 'block.started':
      setBlock({ status: 'running', text: '', attempt: ev.attempt ?? 1, waiting: undefined, error: undefined })
      break
    case 'block.delta': {
      const prev = s.blocks[blockKey(ev)]
      setBlock({ status: 'running', text: (prev?.text ?? '') + String(ev.text ?? '') })
      break
    }
    case 'block.retrying':
      // The attempt's streamed text is void.
      setBlock({ status: 'retrying', text: '', attempt: (ev.attempt ?? 1) + 1 })
      break
    case 'block.waiting':
      setBlock({
        status: 'waiting',
        waiting: { reason: ev.reason as string, until: ev.until as number | undefined, message: ev.message as string | undefined },
      })
      break
    case 'block.completed':
      setBlock({
        status: 'completed',
        waiting: undefined,
        output: ev.output,
        outputRef: ev.outputRef as string | undefined,
        route: ev.route as string | undefined,
        provider: ev.provider as string | undefined,
        model: ev.model as string | undefined,
        tokens: ev.tokens as number | undefined,
        costUsd: ev.costUsd as number | undefined,
        durationMs: ev.durationMs as number | undefined,
      })
      break
    case 'block.failed':
      setBlock({ status: 'failed', waiting: undefined, error: ev.error as string })
      break
    case 'block.skipped':
      setBlock({ status: 'skipped' })
      break
    default:
      break
  }
  if (ev.type.startsWith('execution.') && ev.type !== 'execution.started') {
    next.tokens = ev.tokens as number | undefined
    next.costUsd = ev.costUsd as number | undefined
    next.durationMs = ev.durationMs as number | undefined
  }
  return next
}
