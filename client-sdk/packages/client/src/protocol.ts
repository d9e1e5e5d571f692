/**
 * The wire protocol's constants and JSON messages (docs/protocol.md), as the server's
 * `resonant-protocol` crate defines them. `tests/protocol_ts.rs` checks this file against the
 * Rust types: change both together.
 */

/** y-websocket: document sync (step 1, step 2, update). */
export const MSG_SYNC = 0
/** y-websocket: awareness update. */
export const MSG_AWARENESS = 1
/** y-websocket: authentication result (server to client). */
export const MSG_AUTH = 2
/** y-websocket: ask the other side for its full awareness state. */
export const MSG_QUERY_AWARENESS = 3
/** Resonant: a JSON message (below). */
export const MSG_STATELESS = 5
/** Resonant: sync status (the client's opt-in; the server's save acknowledgement). */
export const MSG_SYNC_STATUS = 8

/** Sync sub-type: the sender's state vector. */
export const SYNC_STEP1 = 0
/** Sync sub-type: the updates the receiver lacks. */
export const SYNC_STEP2 = 1
/** Sync sub-type: an incremental update. */
export const SYNC_UPDATE = 2

/** Largest stateless message the server accepts, in bytes of frame. */
export const MAX_STATELESS_BYTES = 65536
/** Largest broadcast event the server relays, in bytes of JSON. */
export const MAX_BROADCAST_BYTES = 8192
/** Most executions one `executions.resume` may list. */
export const MAX_RESUME = 100
/** Most characters in an approval decision's comment. */
export const MAX_DECISION_COMMENT_CHARS = 2000

/** The server's close codes. */
export const CLOSE = {
  UNSUPPORTED_DATA: 1003,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  SLOW_CONSUMER: 4000,
  TIMEOUT: 4001,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  GONE: 4410,
  RATE_LIMITED: 4429,
} as const

// Client → server.

/** A fresh token before the current one expires. */
export interface AuthRequest {
  type: 'auth'
  token?: string | null
}

/** A liveness probe; answered with a pong carrying the same id. */
export interface PingRequest {
  type: 'ping'
  id?: unknown
}

/** An ephemeral event for the room's other editors. */
export interface BroadcastRequest {
  type: 'broadcast'
  event?: unknown
}

export interface ExecutionStartRequest {
  type: 'execution.start'
  input?: Record<string, unknown> | null
  priority?: 'speed' | 'quality' | 'cost' | null
  idempotencyKey?: string | null
  maxConcurrency?: number | null
  requestId?: unknown
}

export interface ExecutionCancelRequest {
  type: 'execution.cancel'
  executionId: string
  requestId?: unknown
}

export interface ExecutionDecideRequest {
  type: 'execution.decide'
  executionId: string
  blockId: string
  approved: boolean
  comment?: string | null
  requestId?: unknown
}

export interface ExecutionRerunRequest {
  type: 'execution.rerun'
  executionId: string
  fromBlock?: string | null
  /** `pinned` (default): the graph the execution ran; `live`: the document as it is now. */
  document?: string | null
  idempotencyKey?: string | null
  requestId?: unknown
}

/** The events missed since the last seq seen per execution. */
export interface ExecutionsResumeRequest {
  type: 'executions.resume'
  after?: Record<string, number>
  running?: boolean
  requestId?: unknown
}

export type ExecutionRequest =
  | ExecutionStartRequest
  | ExecutionCancelRequest
  | ExecutionDecideRequest
  | ExecutionRerunRequest
  | ExecutionsResumeRequest

/** Everything a client may send in a stateless frame. */
export type ClientMsg = AuthRequest | PingRequest | BroadcastRequest | ExecutionRequest

// Server → client.

/** A refusal or a complaint; `requestId` is present (possibly null) in answers to requests. */
export interface ErrorMsg {
  type: 'error'
  code: string
  message: string
  requestId?: unknown
  problems?: unknown
}

export interface PongMsg {
  type: 'pong'
  id: unknown
}

/** A token refresh was accepted. */
export interface AuthOkMsg {
  type: 'auth'
  status: string
  expiresAt: number | null
}

/** The connection's role changed. */
export interface AccessMsg {
  type: 'access'
  role: string
  readOnly: boolean
}

/** Another editor's broadcast event. */
export interface BroadcastMsg {
  type: 'broadcast'
  event: unknown
  from: { userId: string }
}

export interface ExecutionAcceptedMsg {
  type: 'execution.accepted'
  executionId: string
  created: boolean
  rerunOf?: string
  requestId: unknown
}

export interface ExecutionCancellingMsg {
  type: 'execution.cancelling'
  executionId: string
  requestId: unknown
}

export interface ExecutionDecidedMsg {
  type: 'execution.decided'
  executionId: string
  blockId: string
  requestId: unknown
}

// Execution events are `ExecutionEvent` in types.ts: the fields after `ts` depend on `type`.

/** Everything the server sends in a stateless frame, execution events aside. */
export type ServerMsg =
  | ErrorMsg
  | PongMsg
  | AuthOkMsg
  | AccessMsg
  | BroadcastMsg
  | ExecutionAcceptedMsg
  | ExecutionCancellingMsg
  | ExecutionDecidedMsg
