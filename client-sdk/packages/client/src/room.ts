import * as Y from 'yjs'
import type { WebsocketProvider } from 'y-websocket'
import type { Awareness } from 'y-protocols/awareness'
import type { ManagedSocket } from './socket.js'
import { Connection, TERMINAL_CLOSES, sendJson, sendRaw } from './connection.js'
import { Rpc } from './rpc.js'
import { WorkflowDoc } from './workflow.js'
import { Presence } from './presence.js'
import { UndoController } from './undo.js'
import { Execution, type ExecutionHandle, type ExecutionHost } from './executions.js'
import { LocalCopy, hasIndexedDb, localName } from './offline.js'
import {
  RoomError,
  type BroadcastSender,
  type ClientOptions,
  type ConnectionStatus,
  type ExecutionEvent,
  type RoomErrorCode,
  type RunOptions,
  type SaveStatus,
  type Unsubscribe,
} from './types.js'
import { MAX_BROADCAST_BYTES, MAX_RESUME, MSG_SYNC, MSG_SYNC_STATUS, type ExecutionRequest } from './protocol.js'

/** Fatal errors after which the local copy is deleted: the workflow is gone or not ours. */
// Not `invalid-room`: a copy for a name the server refuses never synced, and a 1008 from an
// intermediary must not delete offline edits.
const CLEARS_LOCAL = new Set<RoomErrorCode>(['forbidden', 'deleted', 'not-found'])
/** Events a room emits; read the getters in the callback. */
export type RoomEvent = 'status' | 'save' | 'synced' | 'loaded' | 'error'

interface Waiter {
  resolve: () => void
  reject: (e: Error) => void
}

/** Per-connection accounting of updates sent and acknowledged. */
interface Conn {
  socket: ManagedSocket
  sent: number
  acked: number
  /** The handshake's step 2 (everything the server lacked) has been sent. */
  handshakeSent: boolean
}

/** Retries of a gap replay the server could not serve, before falling back to REST. */
const GAP_RETRIES = 5

/**
 * One workflow's live document: the socket (y-websocket's provider over a managed socket),
 * save status from the server's acknowledgements, typed helpers, undo, presence and
 * executions. Get one from `ResonantClient.enterRoom`.
 */
export class Room implements ExecutionHost {
  /** The workflow's Yjs document. */
  readonly doc = new Y.Doc()
  /** The y-websocket provider (its socket is managed by the room's connection). */
  readonly provider: WebsocketProvider
  /** The room's awareness (presence) instance. */
  readonly awareness: Awareness
  /** Typed helpers over the document layout. */
  readonly workflow: WorkflowDoc
  /** Undo and redo of this user's changes. */
  readonly undo: UndoController
  /** My presence and everyone else's. */
  readonly presence: Presence
  /** Transaction origin of this user's edits. */
  readonly localOrigin = { local: true }
  private readonly viewOrigin = { local: true, untracked: true }
  private _status: ConnectionStatus = 'connecting'
  private _save: SaveStatus = 'unknown'
  private _synced = false
  private _loaded = false
  private _error: RoomError | null = null
  /** Set once the room stopped for good (fatal error or destroyed): waiters reject with it. */
  private stopped: RoomError | null = null
  private readonly connection: Connection
  private workflowChecked = false
  private conn: Conn | null = null
  /** Local changes not yet known to be stored (made offline, or unacknowledged when a socket died). */
  private dirty = false
  private listeners = new Map<RoomEvent, Set<() => void>>()
  private broadcastListeners = new Set<(event: unknown, from: BroadcastSender) => void>()
  private syncWaiters: Waiter[] = []
  private saveWaiters = new Set<Waiter>()
  private readonly rpc = new Rpc(() => this.conn?.socket ?? null)
  private gapTries = 0
  private gapTimer: ReturnType<typeof setTimeout> | null = null
  private _readOnly = false
  /** Edits of this connection the server refused (read-only): in the local document, never stored. */
  private refused = false
  private execs = new Map<string, Execution>()
  private execOrder: Execution[] = []
  private execListeners = new Set<() => void>()
  private flushes: Array<() => void> = []
  private frameScheduled = false
  private windowCleanup: (() => void) | null = null
  private destroyed = false
  /** The copy in IndexedDB (`offline` option), or null. */
  private local: LocalCopy | null = null
  /** Settles once a deleted workflow's (or lost access's) local copy is gone. */
  localCleared: Promise<void> = Promise.resolve()

  constructor(
    readonly workflowId: string,
    private readonly options: ClientOptions,
  ) {
    // Encoded: an id with `/` or `%` in it must reach the server as one path segment (it then
    // refuses the name with 1008) rather than miss the route and fail every upgrade with a 404.
    this.connection = new Connection(options.url, `workflow-${encodeURIComponent(workflowId)}`, this.doc, options, {
      live: () => !this.destroyed && !this._error?.fatal,
      opened: (s) => this.opened(s),
      sent: (s, f) => this.sentFrame(s, f),
      acked: (s) => this.acked(s),
      message: (msg) => this.onJson(msg),
      capabilities: () => this.recompute(),
      closed: (s, code, reason) => this.closed(s, code, reason),
    })
    this.provider = this.connection.provider
    this.awareness = this.provider.awareness
    this.workflow = new WorkflowDoc(this.doc, this.localOrigin, this.viewOrigin)
    this.undo = new UndoController(this.workflow, this.localOrigin)
    this.presence = new Presence(
      this.awareness,
      options.user,
      options.presenceThrottleMs ?? 50,
      options.staleGraceMs ?? 10000,
    )
    this.provider.on('sync', (synced: boolean) => this.onSync(synced))
    this.doc.on('update', (_u: Uint8Array, origin: unknown) => {
      // Read from the local copy: neither new nor the server's (its flag says if it is unsaved).
      if (this.local && origin === this.local.persistence) return
      if (origin === this.provider) return
      // A change the provider did not bring is local; with no open socket it waits for the next one.
      this.local?.setUnsaved(true)
      if (!(this.conn && this.conn.socket.readyState === 1)) {
        this.dirty = true
        this.recompute()
      }
    })
    this.installUnloadGuard()
    const offline = options.offline ?? hasIndexedDb()
    if (offline && hasIndexedDb()) {
      this.local = new LocalCopy(localName(httpUrl(options.url), options.user.id, workflowId), this.doc)
      // Connect once the local copy is in the document, so the handshake's step 2 carries its
      // unsaved edits and is counted like any other unacknowledged update.
      void this.local.load().then((state) => this.localLoaded(state))
    } else this.provider.connect()
  }

  private localLoaded(state: { synced: boolean; unsaved: boolean } | null) {
    if (this.destroyed || this._error?.fatal) return
    if (state) {
      if (state.unsaved) this.dirty = true
      // Edits made while the copy was opening.
      if (this.dirty) this.local!.setUnsaved(true)
      if (state.synced && !this._loaded) {
        this._loaded = true
        this.emit('loaded')
      }
      this.recompute()
    } else {
      // Timed out or refused: stop the half-open copy, or it could apply a stale state later
      // and would never be cleared.
      this.local?.destroy()
      this.local = null
    }
    this.provider.connect()
  }

  /** Whether the room keeps a copy in this browser's IndexedDB (see the `offline` option). */
  get persisted(): boolean {
    return this.local?.ready ?? false
  }

  /** Connection status. */
  get status(): ConnectionStatus {
    return this._status
  }

  /** Save status (see {@link SaveStatus}). */
  get saveStatus(): SaveStatus {
    return this._save
  }

  /** Whether the document has the server's state since the last (re)connect. */
  get synced(): boolean {
    return this._synced
  }

  /**
   * True once the document first held the server's state, and from then on, through
   * disconnects: the editor can keep showing (and editing) it offline. `synced` is per
   * connection; `loaded` is sticky.
   */
  get loaded(): boolean {
    return this._loaded
  }

  /**
   * Why the room stopped for good (`error.fatal`), or why it cannot connect right now (a
   * failing `getToken`; cleared once a connection opens).
   */
  get error(): RoomError | null {
    return this._error
  }

  /** Subscribes to a room event. */
  on(event: RoomEvent, cb: () => void): Unsubscribe {
    let set = this.listeners.get(event)
    if (!set) this.listeners.set(event, (set = new Set()))
    set.add(cb)
    return () => set!.delete(cb)
  }

  /**
   * Sends an ephemeral event to the room's other editors (a reaction, "I am running this"):
   * relayed by the server, never stored, not part of the document or undo. Returns false when
   * there is no open connection to send it on (it is dropped, not queued: an event that
   * arrives late is usually wrong). Throws a RangeError over 8 KiB of JSON (the server's cap).
   */
  broadcast(event: unknown): boolean {
    const json = JSON.stringify(event ?? null)
    if (new TextEncoder().encode(json).length > MAX_BROADCAST_BYTES) {
      throw new RangeError(`a broadcast event may be ${MAX_BROADCAST_BYTES} bytes of JSON`)
    }
    const socket = this.conn?.socket
    if (!socket || socket.readyState !== 1) return false
    sendJson(socket, { type: 'broadcast', event: event ?? null })
    return true
  }

  /** Calls `cb` with each event another editor broadcasts, and who sent it. */
  onBroadcast(cb: (event: unknown, from: BroadcastSender) => void): Unsubscribe {
    this.broadcastListeners.add(cb)
    return () => this.broadcastListeners.delete(cb)
  }

  /**
   * Resolves once the document holds the server's state; rejects with a {@link RoomError} if
   * the room stops for good first (or is destroyed).
   */
  whenSynced(): Promise<void> {
    if (this._synced) return Promise.resolve()
    if (this.stopped) return Promise.reject(this.stopped)
    return new Promise((resolve, reject) => this.syncWaiters.push({ resolve, reject }))
  }

  /**
   * Resolves once every local change is stored (save status `saved`); rejects with a
   * {@link RoomError} if the room stops for good first (or is destroyed).
   */
  whenSaved(): Promise<void> {
    if (this._save === 'saved') return Promise.resolve()
    if (this.stopped) return Promise.reject(this.stopped)
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve: () => {
          off()
          this.saveWaiters.delete(w)
          resolve()
        },
        reject: (e) => {
          off()
          this.saveWaiters.delete(w)
          reject(e)
        },
      }
      const off = this.on('save', () => {
        if (this._save === 'saved') w.resolve()
      })
      this.saveWaiters.add(w)
    })
  }

  /** Updates sent on the current connection and not yet acknowledged. */
  get unacknowledged(): number {
    return this.conn ? this.conn.sent - this.conn.acked : 0
  }

  private emit(event: RoomEvent) {
    for (const l of [...(this.listeners.get(event) ?? [])]) l()
  }

  private setStatus(s: ConnectionStatus) {
    if (this._status !== s) {
      this._status = s
      this.emit('status')
    }
    this.recompute()
  }

  // --- the connection ---------------------------------------------------------------------

  /**
   * Stops the room for good (a fatal error) or reports a transient one. A fatal error rejects
   * every `whenSynced()` / `whenSaved()` waiter and stops reconnecting.
   */
  private fail(err: RoomError) {
    if (this._error?.fatal) return
    this._error = err
    this.emit('error')
    if (!err.fatal) return
    if (this.local && CLEARS_LOCAL.has(err.code)) {
      const local = this.local
      this.local = null
      this.localCleared = local.clear()
    }
    this.stop(err)
    this.provider.disconnect()
    this.setStatus('disconnected')
  }

  private stop(err: RoomError) {
    if (this.stopped) return
    this.stopped = err
    const sync = this.syncWaiters
    this.syncWaiters = []
    for (const w of sync) w.reject(err)
    for (const w of [...this.saveWaiters]) w.reject(err)
  }

  /**
   * A development server admits any room, so a mistyped or deleted workflow would open empty
   * and say "Saved" while nothing is listed anywhere. Once the socket let us in, ask the REST
   * API; only a definite 404 counts (a server or proxy without the API answers otherwise).
   */
  private async checkWorkflow() {
    if (this.workflowChecked || this.options.checkWorkflow === false) return
    this.workflowChecked = true
    const f = (globalThis as { fetch?: typeof fetch }).fetch
    if (!f) return
    try {
      const token = this.connection.lastToken
      const res = await f(`${httpUrl(this.options.url)}/api/v1/workflows/${encodeURIComponent(this.workflowId)}`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
      })
      if (res.status !== 404 || this.destroyed) return
      // Only the server's own answer counts: a proxy or static host that lacks the API also
      // says 404, and this verdict stops the room and deletes its offline copy.
      const body = (await res.json().catch(() => null)) as { error?: { code?: unknown } } | null
      if (body?.error?.code === 'not_found' && !this.destroyed) {
        this.fail(new RoomError('not-found', `no workflow ${this.workflowId}`))
      }
    } catch {
      // Unreachable API: the socket is the judge.
    }
  }

  private opened(socket: ManagedSocket) {
    this.conn = { socket, sent: 0, acked: 0, handshakeSent: false }
    if (this._error && !this._error.fatal) {
      this._error = null
      this.emit('error')
    }
    this.refused = false
    // Others' copies (and the server's) marked my entry removed at its current clock when the
    // last socket died; the provider re-sends it at that same clock on open, which they would
    // ignore until the next renewal (15 s). A fresh clock makes me visible again at once.
    this.awareness.setLocalState({ ...this.presence.me() })
    // The replay request must be the first extension message: it opts the connection in and
    // holds live events back until the missed ones are sent, so order is exact.
    const after: Record<string, number> = {}
    const open = [...this.execs.values()].filter((e) => !e.finished).slice(-MAX_RESUME)
    for (const e of open) after[e.id] = e.state().seq
    sendJson(socket, { type: 'executions.resume', after, running: true })
    // Ask for acknowledgements explicitly too, and learn at once whether the server speaks them.
    sendRaw(socket, [MSG_SYNC_STATUS, 1])
    this.connection.startLiveness(socket)
    this.rpc.opened(socket)
    this.setStatus('connected')
  }

  private sentFrame(socket: ManagedSocket, frame: Uint8Array) {
    const conn = this.conn
    if (!conn || conn.socket !== socket) return
    if (frame[0] === MSG_SYNC && (frame[1] === 1 || frame[1] === 2)) {
      conn.sent++
      if (frame[1] === 1) conn.handshakeSent = true
      this.recompute()
    }
  }

  /** The server acknowledged a save (`[8, 1]`). */
  private acked(socket: ManagedSocket) {
    const conn = this.conn
    if (conn && conn.socket === socket) {
      conn.acked = Math.min(conn.acked + 1, conn.sent)
      if (conn.handshakeSent && conn.acked >= conn.sent) this.dirty = false
      this.recompute()
    }
  }

  private closed(socket: ManagedSocket, code: number, reason: string) {
    if (this.conn?.socket === socket) {
      if (this.conn.sent > this.conn.acked) this.dirty = true
      this.conn = null
    }
    if (this._synced) {
      this._synced = false
      this.emit('synced')
    }
    this.presence.markDisconnected()
    this.rpc.closed(socket)
    const terminal = TERMINAL_CLOSES.get(code)
    if (socket.tokenError !== undefined && !this.destroyed) {
      const e = socket.tokenError
      this.fail(new RoomError('token-failed', e instanceof Error ? e.message : String(e), null, false))
    }
    if (terminal && !this._error?.fatal) {
      this.fail(new RoomError(terminal, reason, code))
    } else if (this.destroyed || this._error?.fatal) {
      this.setStatus('disconnected')
    } else {
      this.setStatus('reconnecting')
    }
  }

  private onSync(synced: boolean) {
    if (!synced || this._synced) return
    this._synced = true
    this.connection.resetBackoff()
    this.presence.markConnected()
    this.local?.markSynced()
    this.emit('synced')
    void this.checkWorkflow()
    if (!this._loaded) {
      this._loaded = true
      this.emit('loaded')
    }
    const waiters = this.syncWaiters
    this.syncWaiters = []
    for (const w of waiters) w.resolve()
  }

  private recompute() {
    const conn = this.conn
    const { extensions, acks } = this.connection
    let next: SaveStatus
    if (!conn || conn.socket.readyState !== 1) {
      next = this.dirty ? (this.local?.ready ? 'local' : 'offline') : acks ? 'saved' : 'unknown'
    } else if (!(extensions || acks) || this.refused || (this._readOnly && (conn.sent > conn.acked || this.dirty))) {
      // A read-only connection's own edits are never stored, so they are never "saving".
      next = 'unknown'
    } else {
      next = conn.sent > conn.acked || this.dirty ? 'saving' : 'saved'
    }
    if (next === 'saved') this.local?.setUnsaved(false)
    if (next !== this._save) {
      this._save = next
      this.emit('save')
    }
  }

  // --- liveness ---------------------------------------------------------------------------

  /** Checks the socket is alive now (called on `online`, `visibilitychange` and `pageshow`). */
  checkLiveness() {
    this.connection.checkLiveness()
  }

  private installUnloadGuard() {
    const w = (globalThis as { window?: Window }).window
    if (!w || typeof w.addEventListener !== 'function') return
    const unload = (e: BeforeUnloadEvent) => {
      if (this._save === 'saving' || this._save === 'offline') {
        e.preventDefault()
        e.returnValue = ''
      }
    }
    if (this.options.guardUnload) w.addEventListener('beforeunload', unload)
    this.windowCleanup = () => w.removeEventListener('beforeunload', unload)
  }

  // --- extension messages -----------------------------------------------------------------

  private onJson(msg: Record<string, unknown>) {
    if (typeof msg !== 'object' || msg === null) return
    const requestId = typeof msg.requestId === 'string' ? msg.requestId : null
    if (typeof msg.executionId === 'string' && typeof msg.seq === 'number' && typeof msg.type === 'string') {
      if (msg.workflowId !== undefined && msg.workflowId !== this.workflowId) return
      this.execution(msg.executionId).receive(msg as ExecutionEvent)
      return
    }
    if (msg.type === 'access') {
      this.setReadOnly(msg.readOnly === true)
      return
    }
    if (msg.type === 'broadcast') {
      const from = (typeof msg.from === 'object' && msg.from !== null ? msg.from : {}) as BroadcastSender
      for (const l of [...this.broadcastListeners]) l(msg.event, from)
      return
    }
    if (msg.type === 'error' && !requestId && msg.code === 'read-only') {
      // The server refused this update and will not acknowledge it: settle the count, and
      // never claim the local document is saved.
      const conn = this.conn
      if (conn) conn.acked = Math.min(conn.acked + 1, conn.sent)
      this.refused = true
      this.setReadOnly(true)
      // The count changed even when the status did not (already read-only at opt-in).
      this.recompute()
      this.emit('save')
      return
    }
    if (msg.type === 'error' && !requestId && (msg.code === 'replay-busy' || msg.code === 'replay-failed') && this.hasGaps()) {
      // A replay the server could not serve now (busy with another, or failed): ask again.
      this.retryGaps()
      return
    }
    if (requestId && this.rpc.reply(requestId, msg)) return
    if (msg.type === 'error') console.warn(`resonant: ${msg.code}: ${msg.message}`)
  }

  private setReadOnly(readOnly: boolean) {
    if (this._readOnly === readOnly) return
    this._readOnly = readOnly
    this.workflow.repairs = !readOnly
    this.emit('status')
    this.recompute()
  }

  /** Whether the server treats this connection as read-only (a viewer): edits are refused. */
  get readOnly(): boolean {
    return this._readOnly
  }

  private hasGaps(): boolean {
    for (const e of this.execs.values()) if (e.gapRequested) return true
    return false
  }

  private resumeGaps() {
    const after: Record<string, number> = {}
    for (const e of this.execs.values()) if (e.gapRequested) after[e.id] = e.state().seq
    if (Object.keys(after).length > 0) this.rpc.send({ type: 'executions.resume', after, running: false })
  }

  /**
   * Asks again for the gaps, with backoff; after a few refusals the events come over REST
   * instead, so a handle never stalls waiting for a replay the socket cannot give.
   */
  private retryGaps() {
    if (this.gapTimer) return
    this.gapTries++
    const delay = Math.min(100 * 2 ** this.gapTries, 3000)
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null
      if (this.gapTries > GAP_RETRIES) {
        this.gapTries = 0
        for (const e of this.execs.values()) if (e.gapRequested) void this.catchUp(e)
      } else this.resumeGaps()
    }, delay)
  }

  /** Fetches an execution's events after its seq over REST and applies them. */
  private async catchUp(e: Execution) {
    try {
      for (let page = 0; page < 1000; page++) {
        const after = e.state().seq
        const token = this.options.getToken ? await this.options.getToken('connect') : null
        const res = await fetch(`${httpUrl(this.options.url)}/api/v1/executions/${encodeURIComponent(e.id)}/events?after=${after}`, {
          headers: token ? { authorization: `Bearer ${token}` } : {},
        })
        if (!res.ok) throw new Error(`GET events: ${res.status}`)
        const body = (await res.json()) as { events?: ExecutionEvent[] }
        const events = Array.isArray(body.events) ? body.events : []
        for (const ev of events) e.receive(ev)
        if (events.length === 0 || e.state().seq === after) return
      }
    } catch (err) {
      console.warn(`resonant: could not fetch the events of ${e.id}`, err)
    }
  }

  /** Sends a request and waits for its reply (`ResonantError` on a refusal). */
  request(msg: ExecutionRequest): Promise<Record<string, unknown>> {
    return this.rpc.request(msg)
  }

  // --- executions -------------------------------------------------------------------------

  /** Starts the workflow as it stands; resolves with a live handle once the server accepts. */
  async run(opts: RunOptions = {}): Promise<ExecutionHandle> {
    const reply = await this.request({
      type: 'execution.start',
      input: opts.input ?? {},
      idempotencyKey: opts.idempotencyKey,
      priority: opts.priority,
      maxConcurrency: opts.maxConcurrency,
    })
    const known = this.execs.has(reply.executionId as string)
    const e = this.execution(reply.executionId as string)
    // A reused idempotency key answers with an execution that may be over or parked on an
    // approval: nothing more may come live, so fetch what it did.
    if (reply.created === false && !known) void this.catchUp(e)
    return e
  }

  /** Follows an execution from `afterSeq` (the last seq seen, e.g. before a reload). */
  attach(executionId: string, opts: { afterSeq?: number } = {}): ExecutionHandle {
    const known = this.execs.get(executionId)
    if (known) return known
    const e = this.execution(executionId, opts.afterSeq ?? 0)
    // When the socket is not open yet, the resume sent on open already lists it.
    if (this.conn?.socket.readyState === 1) this.resume(executionId, opts.afterSeq ?? 0)
    // The socket replays only what is stored after the seq, then live events; a finished
    // execution has none left to send live. REST brings everything up to now either way, and
    // the seq check drops whatever arrives twice.
    void this.catchUp(e)
    return e
  }

  /** Every execution this room knows, oldest first. */
  executions(): ExecutionHandle[] {
    return this.execOrder
  }

  /** Calls `cb` when an execution appears. */
  onExecutions(cb: () => void): Unsubscribe {
    this.execListeners.add(cb)
    return () => this.execListeners.delete(cb)
  }

  /** The handle of an execution, created on first sight. */
  handleFor(executionId: string): ExecutionHandle {
    return this.execution(executionId)
  }

  private execution(id: string, afterSeq = 0): Execution {
    let e = this.execs.get(id)
    if (!e) {
      e = new Execution(id, this, afterSeq)
      this.execs.set(id, e)
      this.execOrder = [...this.execOrder, e]
      for (const l of [...this.execListeners]) l()
    }
    return e
  }

  /** Asks for the events of one execution after `afterSeq`. */
  resume(executionId: string, afterSeq: number) {
    this.rpc.send({ type: 'executions.resume', after: { [executionId]: afterSeq }, running: false })
  }

  /** A replayed or live event was applied: gap retries start over. */
  progressed() {
    this.gapTries = 0
  }

  /** Runs `flush` on the next animation frame (one timer for all executions). */
  schedule(flush: () => void) {
    this.flushes.push(flush)
    if (this.frameScheduled) return
    this.frameScheduled = true
    const run = () => {
      this.frameScheduled = false
      const fs = this.flushes
      this.flushes = []
      for (const f of fs) {
        try {
          f()
        } catch (e) {
          // One failing subscriber must not starve the others.
          queueMicrotask(() => {
            throw e
          })
        }
      }
    }
    const raf = (globalThis as { requestAnimationFrame?: (cb: () => void) => number }).requestAnimationFrame
    if (raf) raf(run)
    else setTimeout(run, 16)
  }

  // --- lifetime ---------------------------------------------------------------------------

  /** Closes the socket and stops everything; called when the last holder leaves. */
  destroy() {
    if (this.destroyed) return
    this.destroyed = true
    this.stop(new RoomError('destroyed', ''))
    this.windowCleanup?.()
    this.connection.destroy()
    if (this.gapTimer) clearTimeout(this.gapTimer)
    this.presence.destroy()
    this.undo.destroy()
    this.local?.destroy()
    this.provider.destroy()
    this.doc.destroy()
    this.setStatus('disconnected')
  }
}

/** The server's http(s) base URL, whatever form `url` was given in. */
export function httpUrl(url: string): string {
  return url.replace(/\/+$/, '').replace(/^ws/, 'http').replace(/\/sync$/, '')
}
