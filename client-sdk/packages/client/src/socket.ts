/**
 * A WebSocket stand-in handed to y-websocket's provider. It lets the room wait out its
 * reconnect backoff and fetch a token before each connection (the constructor must be
 * synchronous, neither is), see every frame the provider sends (to count updates awaiting an
 * acknowledgement), and take the extension frames (types 5 and 8) out of the stream before the
 * provider, which knows nothing of them, sees them. Every frame, consumed or not, is counted
 * for liveness.
 */

/** What a managed socket reports to its room. */
export interface SocketHooks {
  /** Milliseconds to wait before this attempt (the room's jittered backoff; 0 for none). */
  delay(): number
  /** Resolves the token of this connection attempt (null: connect without one). */
  token(): Promise<string | null>
  /** The real socket opened; frames sent here go out before the provider's step 1. */
  opened(socket: ManagedSocket): void
  /** A frame arrived; return true when it was consumed (an extension frame). */
  received(socket: ManagedSocket, frame: Uint8Array): boolean
  /** The provider sent a frame. */
  sent(socket: ManagedSocket, frame: Uint8Array): void
  /** The connection ended (for whatever reason, once). */
  closed(socket: ManagedSocket, code: number, reason: string): void
}

/** How long a connection attempt (token included) may take before it is abandoned. */
const CONNECT_TIMEOUT_MS = 10000

/** Minimal close event shape y-websocket reads. */
interface CloseLike {
  code: number
  reason: string
}

/** Builds the socket class for one room: y-websocket constructs it with `new WS(url, protocols)`. */
export function socketClass(hooks: SocketHooks, Impl: typeof WebSocket): new (url: string) => ManagedSocket {
  return class extends ManagedSocket {
    constructor(url: string) {
      super(url, hooks, Impl)
    }
  }
}

/** One connection attempt; see the module comment. */
export class ManagedSocket {
  static readonly CONNECTING = 0
  static readonly OPEN = 1
  static readonly CLOSING = 2
  static readonly CLOSED = 3
  readonly CONNECTING = 0
  readonly OPEN = 1
  readonly CLOSING = 2
  readonly CLOSED = 3
  readyState = 0
  binaryType = 'arraybuffer'
  onopen: ((ev: unknown) => void) | null = null
  onmessage: ((ev: { data: ArrayBuffer }) => void) | null = null
  onclose: ((ev: CloseLike) => void) | null = null
  onerror: ((ev: unknown) => void) | null = null
  /** Frames received so far (a liveness probe checks it moved). */
  framesReceived = 0
  /** When the last frame arrived, or the socket opened (`Date.now()`). */
  lastReceivedAt = 0
  /** Whether the socket ever opened (a close before that is a failed attempt). */
  everOpened = false
  /** Set when `getToken` threw: the attempt ended without a socket. */
  tokenError: unknown = undefined
  private ws: WebSocket | null = null
  private ended = false
  private connectTimer: ReturnType<typeof setTimeout> | null = null
  private wait: { timer: ReturnType<typeof setTimeout>; go: () => void } | null = null

  constructor(
    readonly url: string,
    private readonly hooks: SocketHooks,
    private readonly Impl: typeof WebSocket,
  ) {
    void this.start()
  }

  /** Ends the backoff wait now (the network came back): connect at once. */
  skipWait() {
    this.wait?.go()
  }

  private async start() {
    // The provider reconnects at once; the backoff (jittered, honouring the server's hints)
    // is waited out here, where the room decides it.
    const delay = this.hooks.delay()
    if (delay > 0) {
      await new Promise<void>((resolve) => {
        const go = () => {
          clearTimeout(timer)
          this.wait = null
          resolve()
        }
        const timer = setTimeout(go, delay)
        this.wait = { timer, go }
      })
      if (this.ended) return
    }
    // A token fetch or handshake that hangs (a network change mid-connect) would leave the
    // provider waiting on this socket for good: give up and let it retry.
    const timer = setTimeout(() => this.end(4000, 'connect timed out'), CONNECT_TIMEOUT_MS)
    this.connectTimer = timer
    let token: string | null
    try {
      token = await this.hooks.token()
    } catch (e) {
      // Transient as far as the socket knows: the room reports it and backs off.
      if (this.ended) return
      this.tokenError = e ?? new Error('getToken failed')
      this.end(1006, `getToken failed: ${(e as Error)?.message ?? e}`)
      return
    }
    if (this.ended) return
    // Offer a subprotocol only with a token: a browser fails the handshake when it offers one
    // and a server (a stock y-websocket one, say) selects none.
    const ws = token ? new this.Impl(this.url, ['resonant.v1', token]) : new this.Impl(this.url)
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    ws.onopen = () => {
      if (this.ended) return
      clearTimeout(timer)
      this.readyState = 1
      this.everOpened = true
      this.lastReceivedAt = Date.now()
      this.hooks.opened(this)
      this.onopen?.({})
    }
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ended) return
      this.framesReceived++
      this.lastReceivedAt = Date.now()
      const frame = toBytes(ev.data)
      if (!frame) return
      if (!this.hooks.received(this, frame)) {
        const copy = frame.byteOffset === 0 && frame.byteLength === frame.buffer.byteLength
        this.onmessage?.({ data: (copy ? frame.buffer : frame.slice().buffer) as ArrayBuffer })
      }
    }
    ws.onerror = (ev: Event) => {
      if (!this.ended) this.onerror?.(ev)
    }
    ws.onclose = (ev: CloseEvent) => this.end(ev.code, ev.reason)
  }

  /** Sends a frame the provider built (counted) or the room built (`raw`, not counted). */
  send(data: ArrayBuffer | Uint8Array, raw = false) {
    if (this.ended || !this.ws || this.readyState !== 1) return
    const frame = data instanceof Uint8Array ? data : new Uint8Array(data)
    if (!raw) this.hooks.sent(this, frame)
    this.ws.send(frame)
  }

  /** Closes this connection; the provider hears of it at once, even if the network is dead. */
  close(code = 1000, reason = '') {
    this.end(code, reason)
  }

  private end(code: number, reason: string) {
    if (this.ended) return
    this.ended = true
    if (this.connectTimer) clearTimeout(this.connectTimer)
    // Resolves the wait; start() sees `ended` and stops.
    this.wait?.go()
    this.readyState = 3
    const ws = this.ws
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null
      ws.onerror = () => {}
      try {
        ws.close()
      } catch {
        // Already closing.
      }
    }
    this.hooks.closed(this, code, reason)
    // Asynchronously, like a real close event: the provider may still be inside its handler.
    queueMicrotask(() => this.onclose?.({ code, reason }))
  }
}

function toBytes(data: unknown): Uint8Array | null {
  // Not `instanceof ArrayBuffer`: a buffer from another realm (an iframe's socket, Node's `ws`
  // under jsdom) fails it, and every frame would be dropped.
  if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
    return new Uint8Array(data as ArrayBuffer)
  }
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  return null
}
