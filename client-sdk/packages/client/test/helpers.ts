// Test helpers: the real server binary, a frame-filtering proxy, tokens, and event-driven waits.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import crypto from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import WebSocket, { WebSocketServer } from 'ws'
import { ResonantClient, type ClientOptions, type Room } from '../src/index.js'

const here = path.dirname(fileURLToPath(import.meta.url))
const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
})

/** The server binary: $RESONANT_BIN, else $CARGO_TARGET_DIR/debug/resonant, else target/debug. */
export function resonantBin(): string {
  const candidates = [
    process.env.RESONANT_BIN,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug/resonant'),
    path.resolve(here, '../../../../target/debug/resonant'),
  ].filter((c): c is string => !!c)
  const found = candidates.find((c) => existsSync(c))
  if (!found) throw new Error(`resonant binary not found (tried ${candidates.join(', ')}); run cargo build`)
  return found
}

/** A running `resonant serve`. */
export interface Server {
  url: string
  port: number
  stop(): Promise<void>
  stderr(): string
}

/** Starts the server on a free port with a fresh data directory. */
export async function startServer(args: string[] = []): Promise<Server> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'resonant-sdk-'))
  const env: NodeJS.ProcessEnv = { ...process.env, RESONANT_LOG: process.env.RESONANT_LOG ?? 'warn' }
  delete env.DATABASE_URL
  const defaults = args.includes('--demo-delay-ms') ? [] : ['--demo-delay-ms', '5']
  const child = spawn(resonantBin(), ['serve', '--port', '0', '--data-dir', dir, ...defaults, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  const err: string[] = []
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (c: string) => err.push(c))
  const port = await new Promise<number>((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout! })
    lines.on('line', (line) => {
      const m = /^resonant listening on 127\.0\.0\.1:(\d+)$/.exec(line)
      if (m) resolve(Number(m[1]))
    })
    child.once('exit', (code) => reject(new Error(`resonant exited (${code}) before listening: ${err.join('')}`)))
  })
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stderr: () => err.join(''),
    async stop() {
      child.kill('SIGTERM')
      await exited
      children.delete(child)
    },
  }
}

/** Calls the REST API; throws on a non-2xx answer. */
export async function api<T = any>(server: Server, method: string, p: string, body?: unknown, token?: string): Promise<T> {
  const res = await fetch(server.url + p, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${p} → ${res.status}: ${text}`)
  return (text ? JSON.parse(text) : null) as T
}

/** Creates a workflow in the caller's first workspace (creating one with a token). */
export async function newWorkflow(server: Server, token?: string): Promise<string> {
  let ws = (await api(server, 'GET', '/api/v1/workspaces', undefined, token)).items[0]
  if (!ws) ws = await api(server, 'POST', '/api/v1/workspaces', { name: 'sdk tests' }, token)
  const wf = await api(server, 'POST', `/api/v1/workspaces/${ws.id}/workflows`, { name: 'sdk test' }, token)
  return wf.id as string
}

/** An HS256 JWT for `sub`, valid for `ttlSecs` (negative: expired). */
export function mintToken(secret: string, sub: string, ttlSecs: number): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: now + ttlSecs, iat: now - 120, name: sub, email: `${sub}@example.com` })}`
  return `${body}.${crypto.createHmac('sha256', secret).update(body).digest('base64url')}`
}

/** A client with Node's `ws` and a test identity. */
export function client(url: string, name: string, extra: Partial<ClientOptions> = {}): ResonantClient {
  return new ResonantClient({
    url,
    user: { id: name, name, color: '#4a7' },
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    probeTimeoutMs: 1500,
    ...extra,
  })
}

/** Resolves when `pred()` holds, re-checking on `subscribe`'s notifications; rejects after `ms`. */
export function until(subscribe: (cb: () => void) => () => void, pred: () => boolean, what: string, ms = 20000): Promise<void> {
  if (pred()) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off()
      reject(new Error(`timed out waiting for ${what}`))
    }, ms)
    const off = subscribe(() => {
      if (pred()) {
        clearTimeout(timer)
        off()
        resolve()
      }
    })
  })
}

/** Waits on a room's document changes. */
export function untilDoc(room: Room, pred: () => boolean, what: string) {
  return until(
    (cb) => {
      room.doc.on('afterTransaction', cb)
      return () => room.doc.off('afterTransaction', cb)
    },
    pred,
    what,
  )
}

/** Waits on a room event. */
export function untilRoom(room: Room, event: 'status' | 'save' | 'synced' | 'error', pred: () => boolean, what: string) {
  return until((cb) => room.on(event, cb), pred, what)
}

/** How the proxy treats the server's frames. */
export type ProxyMode = 'pass' | 'hold-acks' | 'drop-extensions'

/**
 * A WebSocket proxy between clients and the server: it can hold back save acknowledgements,
 * drop extension frames (a server without them), and cut every connection (a dead network).
 */
export class Proxy {
  private wss: WebSocketServer
  private pairs = new Set<{ client: WebSocket; upstream: WebSocket; held: Buffer[] }>()
  mode: ProxyMode = 'pass'
  refuse = false
  url = ''
  connections = 0

  constructor(private readonly target: string) {
    this.wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    this.wss.on('connection', (client, req) => this.accept(client, req.url ?? '/', req.headers['sec-websocket-protocol']))
  }

  async ready(): Promise<string> {
    await new Promise<void>((r) => (this.wss.address() ? r() : this.wss.once('listening', () => r())))
    const addr = this.wss.address() as { port: number }
    this.url = `http://127.0.0.1:${addr.port}`
    return this.url
  }

  private accept(client: WebSocket, url: string, protocols?: string) {
    if (this.refuse) {
      client.terminate()
      return
    }
    this.connections++
    const upstream = new WebSocket(this.target.replace(/^http/, 'ws') + url, protocols ? protocols.split(',').map((s) => s.trim()) : [])
    const pair = { client, upstream, held: [] as Buffer[] }
    this.pairs.add(pair)
    const early: Buffer[] = []
    client.on('message', (data: Buffer) => (upstream.readyState === 1 ? upstream.send(data) : early.push(data)))
    upstream.on('open', () => {
      for (const d of early) upstream.send(d)
    })
    upstream.on('message', (data: Buffer) => {
      const t = data[0]
      if (this.mode === 'drop-extensions' && (t === 5 || t === 8)) return
      if (this.mode === 'hold-acks' && t === 8) {
        pair.held.push(data)
        return
      }
      if (client.readyState === 1) client.send(data)
    })
    const end = () => {
      this.pairs.delete(pair)
      client.terminate()
      upstream.terminate()
    }
    client.on('close', end)
    upstream.on('close', (code, reason) => {
      this.pairs.delete(pair)
      if (client.readyState === 1) client.close(code === 1005 || code === 1006 ? 1001 : code, reason)
    })
    client.on('error', end)
    upstream.on('error', end)
  }

  /** Stops holding acknowledgements and delivers the held ones. */
  release() {
    this.mode = 'pass'
    for (const p of this.pairs) {
      for (const d of p.held) if (p.client.readyState === 1) p.client.send(d)
      p.held = []
    }
  }

  /** Keeps every connection open but forwards nothing from the server any more (a dead path). */
  blackhole() {
    for (const p of this.pairs) p.upstream.removeAllListeners('message')
  }

  /** Drops every connection abruptly, dropping held acknowledgements too. */
  cut() {
    for (const p of [...this.pairs]) {
      p.held = []
      p.client.terminate()
      p.upstream.terminate()
    }
    this.pairs.clear()
  }

  close() {
    this.cut()
    this.wss.close()
  }
}
