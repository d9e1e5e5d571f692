/**
 * Requests over the room's socket that wait for a reply: each carries a `requestId` the
 * server echoes in its answer. A request made while the socket is down waits in a queue for
 * the next connection; every request gives up after a timeout, and one sent on a socket that
 * closed before the answer came is rejected (it may or may not have arrived).
 */
import type { ManagedSocket } from './socket.js'
import { sendJson } from './connection.js'
import { ResonantError } from './types.js'
import type { ClientMsg, ExecutionRequest } from './protocol.js'

const REQUEST_TIMEOUT_MS = 15000

interface Pending {
  resolve: (v: Record<string, unknown>) => void
  reject: (e: Error) => void
  timer: ReturnType<typeof setTimeout>
  /** The socket it went out on; null while it waits in the queue for a connection. */
  socket: ManagedSocket | null
}

/** The room's requests and their replies; see the module comment. */
export class Rpc {
  private pending = new Map<string, Pending>()
  private queue: Array<{ msg: ClientMsg; requestId: string | null }> = []
  private nextRequest = 1

  /** `socket` gives the room's current connection's socket, or null between connections. */
  constructor(private readonly socket: () => ManagedSocket | null) {}

  /** Sends a request now, or after the next connect when the socket is down. */
  send(msg: ClientMsg, requestId: string | null = null) {
    const socket = this.socket()
    if (socket && socket.readyState === 1) {
      const p = requestId ? this.pending.get(requestId) : undefined
      if (p) p.socket = socket
      sendJson(socket, msg)
    } else this.queue.push({ msg, requestId })
  }

  /** Sends a request and waits for its reply (`ResonantError` on a refusal). */
  request(msg: ExecutionRequest): Promise<Record<string, unknown>> {
    const requestId = `r${this.nextRequest++}`
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId)
        // A request that never went out must not go out later, after its caller gave up.
        this.queue = this.queue.filter((q) => q.requestId !== requestId)
        reject(new ResonantError('timeout', `no answer to ${String(msg.type)} in ${REQUEST_TIMEOUT_MS} ms`))
      }, REQUEST_TIMEOUT_MS)
      this.pending.set(requestId, { resolve, reject, timer, socket: null })
      this.send({ ...msg, requestId }, requestId)
    })
  }

  /** A connection opened: sends what waited in the queue (requests whose caller gave up aside). */
  opened(socket: ManagedSocket) {
    const queued = this.queue
    this.queue = []
    for (const { msg, requestId } of queued) {
      const p = requestId ? this.pending.get(requestId) : undefined
      if (requestId && !p) continue
      if (p) p.socket = socket
      sendJson(socket, msg)
    }
  }

  /** A connection closed: rejects the requests sent on it. */
  closed(socket: ManagedSocket) {
    for (const [id, p] of this.pending) {
      // Requests sent on this socket may or may not have arrived: tell the caller. Queued
      // ones wait for the next connection (or their timeout).
      if (p.socket !== socket) continue
      clearTimeout(p.timer)
      p.reject(new ResonantError('disconnected', 'the connection closed before the server answered'))
      this.pending.delete(id)
    }
  }

  /** Settles the request a reply answers; false when no request waits for `requestId`. */
  reply(requestId: string, msg: Record<string, unknown>): boolean {
    if (!this.pending.has(requestId)) return false
    const p = this.pending.get(requestId)!
    this.pending.delete(requestId)
    clearTimeout(p.timer)
    if (msg.type === 'error') {
      const { code, message, ...rest } = msg
      p.reject(new ResonantError(String(code), String(message), rest))
    } else p.resolve(msg)
    return true
  }
}
