/**
 * A room's connection: y-websocket's provider over managed sockets (socket.ts), the reconnect
 * backoff and the token of each attempt, close handling, and liveness (heartbeat, probes, and
 * the window's `online`, `pageshow` and `visibilitychange`). It learns whether the server
 * speaks Resonant's extensions and takes their frames out of the stream; what they say (save
 * acknowledgements, JSON messages) is the room's business.
 */
import type * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { ManagedSocket, socketClass } from './socket.js'
import { BUSY_FLOOR_MS, backoffDelay, retryHint } from './backoff.js'
import type { ClientOptions, RoomErrorCode } from './types.js'
import { CLOSE, MSG_QUERY_AWARENESS, MSG_STATELESS, MSG_SYNC_STATUS, type ClientMsg } from './protocol.js'

/** Close codes after which reconnecting with the same credentials is pointless. */
export const TERMINAL_CLOSES = new Map<number, RoomErrorCode>([
  [CLOSE.FORBIDDEN, 'forbidden'],
  [CLOSE.GONE, 'deleted'],
  [CLOSE.POLICY_VIOLATION, 'invalid-room'],
])

/** What a connection reports to its room. */
export interface ConnectionHooks {
  /** Whether the room still wants a connection (neither destroyed nor stopped by a fatal error). */
  live(): boolean
  /** A socket opened: the room says hello, then starts liveness (`startLiveness`). */
  opened(socket: ManagedSocket): void
  /** The provider sent a frame. */
  sent(socket: ManagedSocket, frame: Uint8Array): void
  /** The server acknowledged a save on `socket`. */
  acked(socket: ManagedSocket): void
  /** A JSON message arrived (a stateless frame). */
  message(msg: Record<string, unknown>): void
  /** What the server is known to speak changed (`extensions`, `acks`). */
  capabilities(): void
  /** A socket closed; the connection's own state (liveness, backoff) is already updated. */
  closed(socket: ManagedSocket, code: number, reason: string): void
}

/** See the module comment. */
export class Connection {
  /** The y-websocket provider (its socket is managed here). */
  readonly provider: WebsocketProvider
  /** The open socket, or null between connections. */
  socket: ManagedSocket | null = null
  /** A pong, ack or other extension message arrived: this connection's server speaks the extensions. */
  extensions = false
  /** Whether this server acknowledges saves: null until known. */
  acks: boolean | null = null
  /** The token of the last connection attempt. */
  lastToken: string | null = null
  /** Consecutive failed connections (reset once one syncs): the backoff's exponent. */
  private failures = 0
  /** The least wait before the next attempt, from the server's hint or a refused upgrade. */
  private retryFloorMs = 0
  private tokenReason: 'connect' | 'expired' = 'connect'
  private heartbeat: ReturnType<typeof setInterval> | null = null
  private probe: { timer: ReturnType<typeof setTimeout>; socket: ManagedSocket } | null = null
  private windowCleanup: (() => void) | null = null

  constructor(
    url: string,
    roomname: string,
    doc: Y.Doc,
    private readonly options: ClientOptions,
    private readonly hooks: ConnectionHooks,
  ) {
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket
    if (!Impl) throw new Error('no WebSocket implementation: pass options.WebSocket (the `ws` package in Node)')
    const WS = socketClass(
      {
        delay: () => this.nextDelay(),
        token: () => this.token(),
        opened: (s) => this.opened(s),
        received: (s, f) => this.received(s, f),
        sent: (s, f) => this.hooks.sent(s, f),
        closed: (s, code, reason) => this.closed(s, code, reason),
      },
      Impl,
    )
    this.provider = new WebsocketProvider(syncUrl(url), roomname, doc, {
      connect: false,
      WebSocketPolyfill: WS as unknown as typeof WebSocket,
      // Cross-tab broadcast would move updates past the acknowledgement count.
      disableBc: true,
      // The provider reconnects at once; the managed socket waits out the room's backoff,
      // which has jitter and honours the server's hints (nextDelay).
      maxBackoffTime: 0,
      // y-websocket stops on any 44xx; 4401 means "refresh the token", not "give up".
      shouldReconnect: (ev: CloseEvent) => !TERMINAL_CLOSES.has(ev.code),
    } as ConstructorParameters<typeof WebsocketProvider>[3])
    // The provider's own watchdog closes a socket after 30 s without a frame *it* saw; it never
    // sees the acknowledgements and pongs taken out for the room, so a lone editor was
    // reconnected every ~33 s. The heartbeat replaces it (startHeartbeat).
    clearInterval((this.provider as unknown as { _checkInterval: ReturnType<typeof setInterval> })._checkInterval)
    this.installWindowHooks()
  }

  // --- the socket -------------------------------------------------------------------------

  private async token(): Promise<string | null> {
    const reason = this.tokenReason
    this.tokenReason = 'connect'
    const token = this.options.getToken ? await this.options.getToken(reason) : null
    this.lastToken = token
    return token
  }

  /** How long the next connection attempt waits: jittered exponential backoff, at least the floor. */
  private nextDelay(): number {
    const floor = this.retryFloorMs
    this.retryFloorMs = 0
    return backoffDelay(this.failures, floor, this.options.maxBackoffMs ?? 5000)
  }

  /** The document synced: the next failure backs off from the start. */
  resetBackoff() {
    this.failures = 0
  }

  private opened(socket: ManagedSocket) {
    this.socket = socket
    this.extensions = false
    this.hooks.opened(socket)
  }

  private received(socket: ManagedSocket, frame: Uint8Array): boolean {
    const current = this.socket === socket
    if (current && this.probe?.socket === socket) this.endProbe()
    if (frame[0] === MSG_SYNC_STATUS || frame[0] === MSG_STATELESS) {
      // Belt and braces: should the provider's watchdog run after all, frames it never sees
      // still count as life.
      ;(this.provider as unknown as { wsLastMessageReceived: number }).wsLastMessageReceived = Date.now()
    }
    if (frame[0] === MSG_SYNC_STATUS) {
      if (current) {
        this.extensions = true
        this.acks = true
        this.hooks.acked(socket)
      }
      return true
    }
    if (frame[0] === MSG_STATELESS) {
      if (current && !this.extensions) {
        this.extensions = true
        this.acks = true
        this.hooks.capabilities()
      }
      try {
        const d = decoding.createDecoder(frame)
        decoding.readVarUint(d)
        this.hooks.message(JSON.parse(decoding.readVarString(d)))
      } catch (e) {
        console.warn('resonant: unreadable extension message', e)
      }
      return true
    }
    return false
  }

  private closed(socket: ManagedSocket, code: number, reason: string) {
    if (this.probe?.socket === socket) this.endProbe()
    this.stopHeartbeat()
    this.failures++
    this.retryFloorMs = retryHint(code, reason) ?? (code === CLOSE.TRY_AGAIN_LATER || !socket.everOpened ? BUSY_FLOOR_MS : 0)
    if (this.socket === socket) {
      this.socket = null
      this.extensions = false
    }
    if (code === CLOSE.UNAUTHORIZED) this.tokenReason = 'expired'
    this.hooks.closed(socket, code, reason)
  }

  // --- liveness ---------------------------------------------------------------------------

  /** Starts watching a socket that just opened: the first probe, then the heartbeat. */
  startLiveness(socket: ManagedSocket) {
    this.startProbe(socket, true)
    this.startHeartbeat(socket)
  }

  /**
   * Sends a probe on the socket and closes it if nothing at all comes back in time (a socket
   * can look open for minutes after a laptop slept). The first probe of a connection also
   * tells whether the server speaks the extensions: if not, it is not a liveness failure.
   */
  private startProbe(socket: ManagedSocket, initial = false) {
    if (this.probe) return
    const seen = socket.framesReceived
    if (this.extensions || initial) sendJson(socket, { type: 'ping', id: Date.now() })
    else sendRaw(socket, [MSG_QUERY_AWARENESS])
    const timer = setTimeout(() => {
      if (this.probe?.socket !== socket) return
      this.probe = null
      if (initial) {
        // No answer to the ping: a server without the extensions; saves are unknown.
        if (!this.extensions) {
          this.acks = false
          this.hooks.capabilities()
        }
        return
      }
      if (socket.framesReceived === seen) socket.close(4000, 'liveness probe unanswered')
    }, this.options.probeTimeoutMs ?? 4000)
    this.probe = { timer, socket }
  }

  private endProbe() {
    if (!this.probe) return
    clearTimeout(this.probe.timer)
    this.probe = null
  }

  /**
   * While a socket is open: after `pingIntervalMs` without a frame, ping (the server answers,
   * so a lone editor's idle socket keeps hearing from it); after `livenessTimeoutMs` without
   * one, probe, and drop the socket if the probe goes unanswered. Probing first, rather than
   * closing at once, keeps a tab whose timers were throttled in the background from dropping
   * a healthy socket when it wakes.
   */
  private startHeartbeat(socket: ManagedSocket) {
    this.stopHeartbeat()
    const timeout = this.options.livenessTimeoutMs ?? 30000
    const every = this.options.pingIntervalMs ?? 15000
    let lastPing = Date.now()
    this.heartbeat = setInterval(
      () => {
        if (this.socket !== socket || socket.readyState !== 1) return this.stopHeartbeat()
        const now = Date.now()
        const idle = now - socket.lastReceivedAt
        if (idle >= timeout) this.startProbe(socket)
        else if (idle >= every && now - lastPing >= every) {
          lastPing = now
          this.ping(socket)
        }
      },
      Math.max(50, Math.min(every, timeout) / 4),
    )
  }

  private stopHeartbeat() {
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = null
  }

  private ping(socket: ManagedSocket) {
    if (this.extensions || this.acks !== false) sendJson(socket, { type: 'ping', id: Date.now() })
    else sendRaw(socket, [MSG_QUERY_AWARENESS])
  }

  /** Checks the socket is alive now (called on `online`, `visibilitychange` and `pageshow`). */
  checkLiveness() {
    const socket = this.socket
    if (socket && socket.readyState === 1) this.startProbe(socket)
    else if (this.hooks.live()) {
      // Waiting out a backoff: the network is back, so try now.
      const waiting = this.provider.ws as unknown as ManagedSocket | null
      if (waiting) waiting.skipWait()
      else this.provider.connect()
    }
  }

  private installWindowHooks() {
    const w = (globalThis as { window?: Window }).window
    if (!w || typeof w.addEventListener !== 'function') return
    const check = () => this.checkLiveness()
    const visible = () => {
      if (w.document?.visibilityState === 'visible') check()
    }
    w.addEventListener('online', check)
    w.addEventListener('pageshow', check)
    w.document?.addEventListener('visibilitychange', visible)
    this.windowCleanup = () => {
      w.removeEventListener('online', check)
      w.removeEventListener('pageshow', check)
      w.document?.removeEventListener('visibilitychange', visible)
    }
  }

  /** Stops liveness and the window hooks (the room destroys the provider). */
  destroy() {
    this.windowCleanup?.()
    this.stopHeartbeat()
    if (this.probe) clearTimeout(this.probe.timer)
  }
}

// --- extension messages -------------------------------------------------------------------

/** Sends bytes the room built (not counted as a document update). */
export function sendRaw(socket: ManagedSocket, bytes: number[]) {
  socket.send(new Uint8Array(bytes), true)
}

/** Sends a JSON message in a stateless frame. */
export function sendJson(socket: ManagedSocket, msg: ClientMsg) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_STATELESS)
  encoding.writeVarString(e, JSON.stringify(msg))
  socket.send(encoding.toUint8Array(e), true)
}

function syncUrl(url: string): string {
  const u = url.replace(/\/+$/, '').replace(/^http/, 'ws')
  return u.endsWith('/sync') ? u : `${u}/sync`
}
