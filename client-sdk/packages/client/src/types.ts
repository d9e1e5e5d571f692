/** Public types of `@resonant/client`. */
import type * as Y from 'yjs'

/** Connection status of a room's socket. */
export type ConnectionStatus = 'connecting' | 'connected' | 'reconnecting' | 'disconnected'

/**
 * Whether the server has stored every local change.
 * - `saved`: every update sent on this connection was acknowledged and nothing is pending.
 * - `saving`: updates were sent and are not acknowledged yet.
 * - `offline`: the socket is down and there are local changes the server has not stored,
 *   held only in this page's memory.
 * - `local`: the same, but they are stored in this browser (IndexedDB, the `offline` option):
 *   they survive a reload or closing the tab and are sent on the next connection.
 * - `unknown`: the server does not acknowledge saves (a stock y-websocket server), so nobody knows.
 */
export type SaveStatus = 'saved' | 'saving' | 'offline' | 'local' | 'unknown'

/** Who I am in presence: shown to others next to my cursor. */
export interface PresenceUser {
  /** Stable id (the user id when authenticated). */
  id: string
  name: string
  /** A CSS colour. */
  color: string
}

/** A point in flow (canvas) coordinates, not screen pixels. */
export interface FlowPoint {
  x: number
  y: number
}

/** What one editor shares with the others. */
export interface PresenceState {
  user: PresenceUser
  /** The cursor in flow coordinates, or null when the pointer left the canvas. */
  cursor: FlowPoint | null
  /** The selected block's id. */
  selected: string | null
  /** A block being dragged and where it is right now (written to the document only on drop). */
  drag: { blockId: string; position: FlowPoint } | null
  /** The text field being edited (focused), for per-field presence: `part` is `data` or `config`. */
  editing: { block: string; part: 'data' | 'config'; field: string } | null
  /** The app's own presence fields (a status, a viewport, a colour theme): any JSON, kept small. */
  custom: Record<string, unknown>
}

/** Who sent a broadcast event (`Room.onBroadcast`): the server stamps it, the sender cannot. */
export interface BroadcastSender {
  userId?: string
}

/** Another editor in the room. */
export interface Peer extends PresenceState {
  /** The awareness client id. */
  clientId: number
  /** True while the peer's connection (or mine) is being re-established: shown faded, not removed. */
  stale: boolean
}

/** Options of {@link ResonantClient}. */
export interface ClientOptions {
  /** `http(s)://host:port` or `ws(s)://host:port` of the server; `/sync` is added. */
  url: string
  /**
   * Called before every (re)connect; its token goes in `Sec-WebSocket-Protocol`.
   * `reason` is `'expired'` after a 4401 close. Return null in development mode.
   */
  getToken?: (reason: 'connect' | 'expired') => Promise<string | null> | string | null
  /** My presence identity. */
  user: PresenceUser
  /** A WebSocket implementation (the `ws` package in Node); defaults to the global one. */
  WebSocket?: typeof WebSocket
  /** Ask the browser to confirm closing the page while changes are unsaved. Default false. */
  guardUnload?: boolean
  /** Milliseconds a liveness probe waits for an answer before the socket is deemed dead. Default 4000. */
  probeTimeoutMs?: number
  /** How long others stay visible (marked stale) while a socket reconnects. Default 10000. */
  staleGraceMs?: number
  /** Minimum milliseconds between two presence sends. Default 50. */
  presenceThrottleMs?: number
  /** Upper bound of the reconnect backoff in milliseconds (before jitter). Default 5000. */
  maxBackoffMs?: number
  /**
   * How long a socket may go without any frame from the server before it is probed (and,
   * if the probe gets no answer within `probeTimeoutMs`, replaced). Default 30000.
   */
  livenessTimeoutMs?: number
  /**
   * After this long without a frame, a ping is sent (the server answers it), so an idle
   * socket in a room with nobody else keeps hearing from the server. Default 15000.
   */
  pingIntervalMs?: number
  /**
   * Before opening a room, ask the REST API (`GET /api/v1/workflows/{id}`) whether the
   * workflow exists; a 404 stops the room with `not-found`. Turn off for a server without the
   * REST API. Default true.
   */
  checkWorkflow?: boolean
  /**
   * How long a left room (or a closed client) with unsaved changes stays connected to store
   * them before it is destroyed anyway. Default 300000 (5 minutes).
   */
  unsavedGraceMs?: number
  /**
   * Keep each room's document in this browser's IndexedDB (y-indexeddb), one database per
   * server, `user.id` and workflow: a reload while offline shows the last state, and edits made
   * offline survive closing the tab (save status `local`). Default: on where `indexedDB`
   * exists (browsers), so off in Node.
   */
  offline?: boolean
}

/** A block as the document holds it (a React Flow node plus `type` and `config`). */
export interface Block {
  id: string
  type: BlockType
  position: FlowPoint
  data: { label?: string; [k: string]: unknown }
  config: Record<string, unknown>
}

/** A connection (React Flow edge). */
export interface Connection {
  id: string
  source: string
  target: string
  sourceHandle?: string | null
  targetHandle?: string | null
}

/** The canvas viewport. */
export interface Viewport {
  x: number
  y: number
  zoom: number
}

/** The block types (block-schema.ts has each one's handles and fields). */
export type BlockType =
  | 'input'
  | 'ai'
  | 'output'
  | 'condition'
  | 'transform'
  | 'loop'
  | 'merge'
  | 'split'
  | 'human'
  | 'webhook'
  | 'delay'
  | 'errorHandler'

/** What a new block needs; `id` is generated when missing, `config` defaults from the schema. */
export interface NewBlock {
  id?: string
  type: BlockType
  position: FlowPoint
  data?: Block['data']
  config?: Record<string, unknown>
}

/** Status of an execution. */
export type ExecutionStatus = 'pending' | 'running' | 'completed' | 'failed' | 'cancelled'

/** Status of one block in an execution. */
export type BlockRunStatus =
  | 'pending'
  | 'running'
  | 'retrying'
  | 'waiting'
  | 'completed'
  | 'failed'
  | 'skipped'
  /** Stopped unfinished when the execution was cancelled or failed. */
  | 'cancelled'

/** One execution event as the server sends it (docs/protocol.md). */
export interface ExecutionEvent {
  type: string
  executionId: string
  workflowId: string
  seq: number
  ts: number
  blockId?: string
  attempt?: number
  scope?: string
  [k: string]: unknown
}

/** One block's live state in an execution (keyed by block id, or `loop[i]/id` inside a loop). */
export interface BlockRunState {
  status: BlockRunStatus
  /** Streamed text so far (AI blocks); reset when an attempt is retried. */
  text: string
  output?: unknown
  outputRef?: string
  error?: string
  attempt: number
  /** Set while waiting: `approval` or `timer`, its deadline and message. */
  waiting?: { reason: string; until?: number; message?: string }
  route?: string
  provider?: string
  model?: string
  tokens?: number
  costUsd?: number
  durationMs?: number
}

/** An execution's state, folded from its events. */
export interface ExecutionState {
  id: string
  status: ExecutionStatus
  /** The last event's seq applied. */
  seq: number
  blocks: Record<string, BlockRunState>
  outputs?: Record<string, unknown>
  error?: string
  tokens?: number
  costUsd?: number
  durationMs?: number
  /** Every event in seq order (the run log). Append-only and shared by successive states. */
  events: ExecutionEvent[]
}

/** Options of `room.run`. */
export interface RunOptions {
  input?: Record<string, unknown>
  idempotencyKey?: string
  priority?: 'speed' | 'quality' | 'cost'
  maxConcurrency?: number
}

/** A refusal from the server (`{"type":"error"}`), thrown by requests. */
export class ResonantError extends Error {
  constructor(
    /** The server's code (`forbidden`, `invalid-workflow`, …) or `disconnected` / `timeout`. */
    readonly code: string,
    message: string,
    /** Extra fields, e.g. `problems` for `invalid-workflow`. */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message)
    this.name = 'ResonantError'
  }
}

/** Why a room cannot work: see {@link RoomError}. */
export type RoomErrorCode =
  /** The server closed with 4403: no access to this room with this token. */
  | 'forbidden'
  /** The server closed with 4410: the workflow was deleted. */
  | 'deleted'
  /** The workflow does not exist (the REST API answered 404). */
  | 'not-found'
  /** The server closed with 1008: the room name is not valid. */
  | 'invalid-room'
  /** `getToken` threw or rejected; the room keeps retrying with backoff (not fatal). */
  | 'token-failed'
  /** The room was destroyed (left, or its client destroyed) before the awaited state. */
  | 'destroyed'

/**
 * Why a room stopped for good (`fatal`), or why it cannot connect right now (`fatal: false`,
 * cleared once a connection opens). `room.error` holds it; `whenSynced()` and `whenSaved()`
 * reject with it when it is fatal.
 */
export class RoomError extends ResonantError {
  declare readonly code: RoomErrorCode
  constructor(
    code: RoomErrorCode,
    /** The server's close reason or the cause's message. */
    readonly reason: string,
    /** The WebSocket close code behind it, if any (4403, 4410, 1008). */
    readonly closeCode: number | null = null,
    /** True when the room will not reconnect on its own. */
    readonly fatal = true,
  ) {
    super(code, ROOM_ERROR_TEXT[code] + (reason ? `: ${reason}` : ''))
    this.name = 'RoomError'
  }
}

const ROOM_ERROR_TEXT: Record<RoomErrorCode, string> = {
  forbidden: 'No access to this workflow',
  deleted: 'This workflow was deleted',
  'not-found': 'This workflow does not exist',
  'invalid-room': 'Invalid workflow id',
  'token-failed': 'Could not get a sign-in token; retrying',
  destroyed: 'The room was closed',
}

/** A listener removal function. */
export type Unsubscribe = () => void

/** Re-exported so callers name the document type without importing yjs twice. */
export type Doc = Y.Doc
