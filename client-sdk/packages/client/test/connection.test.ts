// Connection robustness (issue 16): liveness of a lone editor, typed errors instead of endless
// retries, bounded-grace close, and reconnect timing that honours the server's hints.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import http from 'node:http'
import crypto from 'node:crypto'
import { WebSocketServer } from 'ws'
import { RoomError, type ResonantClient, type Room } from '../src/index.js'
import { backoffDelay, retryHint } from '../src/backoff.js'
import { client, newWorkflow, Proxy, startServer, until, untilDoc, untilRoom, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

function make(url: string, name: string, extra = {}): ResonantClient {
  const c = client(url, name, extra)
  clients.push(c)
  return c
}

function open(url: string, name: string, workflowId: string, extra = {}): Room {
  return make(url, name, extra).enterRoom(workflowId).room
}

/** An observation window: the test asserts that nothing happens during it. */
const observe = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Counts the times a room lost its connection. */
function drops(room: Room): () => number {
  let n = 0
  room.on('status', () => {
    if (room.status === 'reconnecting') n++
  })
  return () => n
}

describe('liveness', () => {
  // The provider's own watchdog closed a socket after its timeout without a frame *it* saw;
  // acknowledgements and pongs are taken out before it, so a lone editor reconnected every
  // ~33 s. Here the timeout is 1.5 s, so the old behaviour fails within seconds.
  const short = { livenessTimeoutMs: 1500, pingIntervalMs: 500, probeTimeoutMs: 500 }

  it('a lone editor stays connected, idle and while typing', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const a = open(await proxy.ready(), 'ada', wf, short)
    await a.whenSynced()
    const lost = drops(a)
    await observe(4000)
    expect(lost(), 'reconnects while idle alone').toBe(0)
    for (let i = 0; i < 16; i++) {
      a.workflow.addBlock({ type: 'delay', position: { x: i * 10, y: 0 }, config: { seconds: 1 } })
      await observe(250)
    }
    await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'the edits to be saved')
    expect(lost(), 'reconnects while typing alone').toBe(0)
    expect(proxy.connections).toBe(1)
    proxy.close()
  })

  it('a socket that goes silent is replaced without anyone asking', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const a = open(await proxy.ready(), 'ada', wf, short)
    await a.whenSynced()
    proxy.blackhole()
    // No checkLiveness(): the heartbeat notices within the timeout plus the probe.
    await untilRoom(a, 'status', () => a.status === 'reconnecting', 'the silent socket to be dropped')
    await untilRoom(a, 'synced', () => a.synced, 'a fresh socket to sync')
    expect(proxy.connections).toBe(2)
    proxy.close()
  })
})

describe('typed errors', () => {
  it('an id that is not a valid room name stops with invalid-room (1008), once, and waiters reject', async () => {
    const proxy = new Proxy(server.url)
    // Unencoded, `a/b` missed the route: a 404 at every upgrade, retried forever in silence.
    const a = open(await proxy.ready(), 'ada', 'a/b')
    const err = await a.whenSynced().then(
      () => null,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(RoomError)
    expect(err).toMatchObject({ code: 'invalid-room', closeCode: 1008, fatal: true })
    expect(a.error).toBe(err)
    expect(a.status).toBe('disconnected')
    await expect(a.whenSaved()).rejects.toBeInstanceOf(RoomError)
    await observe(1000)
    expect(proxy.connections, 'no retry after a refusal that cannot change').toBe(1)
    proxy.close()
  })

  it('a workflow that does not exist stops with not-found instead of opening empty and "saved"', async () => {
    const a = open(server.url, 'ada', crypto.randomUUID())
    await untilRoom(a, 'error', () => a.error !== null, 'the not-found error')
    expect(a.error).toMatchObject({ code: 'not-found', fatal: true })
    await untilRoom(a, 'status', () => a.status === 'disconnected', 'the room to stop')
  })

  it('a failing getToken is reported (not fatal) and the room recovers when it works again', async () => {
    const wf = await newWorkflow(server)
    let calls = 0
    const a = open(server.url, 'ada', wf, {
      getToken: () => {
        calls++
        if (calls <= 2) throw new Error('token endpoint down')
        return null
      },
    })
    await untilRoom(a, 'error', () => a.error !== null, 'the token error')
    expect(a.error).toBeInstanceOf(RoomError)
    expect(a.error).toMatchObject({ code: 'token-failed', fatal: false })
    expect(a.error!.message).toContain('token endpoint down')
    await a.whenSynced()
    expect(a.error).toBeNull()
    expect(calls).toBe(3)
  })

  it('destroying a room rejects whenSynced() and whenSaved() instead of leaving them pending', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    proxy.refuse = true
    const c = make(await proxy.ready(), 'ada')
    const { room } = c.enterRoom(wf)
    const synced = room.whenSynced()
    room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    const saved = room.whenSaved()
    c.destroy()
    await expect(synced).rejects.toMatchObject({ code: 'destroyed' })
    await expect(saved).rejects.toMatchObject({ code: 'destroyed' })
    await expect(room.whenSynced()).rejects.toBeInstanceOf(RoomError)
    proxy.close()
  })
})

describe('closing the client', () => {
  it('close() keeps a room with unacknowledged changes until they are stored, then destroys it', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const c = make(await proxy.ready(), 'ada')
    const { room } = c.enterRoom(wf)
    await room.whenSynced()
    await untilRoom(room, 'save', () => room.saveStatus === 'saved', 'saved after the handshake')
    proxy.mode = 'hold-acks'
    const id = room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    let closed = false
    const closing = c.close().then(() => (closed = true))
    await observe(500)
    expect(closed, 'closed before the change was stored').toBe(false)
    expect(room.status).toBe('connected')
    proxy.release()
    await closing
    expect(room.status).toBe('disconnected')
    const fresh = open(server.url, 'bob', wf)
    await fresh.whenSynced()
    await untilDoc(fresh, () => !!fresh.workflow.block(id), 'the change on the server')
    proxy.close()
  })

  it('the grace is bounded by unsavedGraceMs', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const c = make(await proxy.ready(), 'ada', { unsavedGraceMs: 300 })
    const { room } = c.enterRoom(wf)
    await room.whenSynced()
    proxy.mode = 'hold-acks'
    room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    const t0 = Date.now()
    await c.close()
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290)
    expect(room.status).toBe('disconnected')
    proxy.close()
  })
})

describe('reconnect timing', () => {
  it('backoff is jittered, grows, is capped, and never undercuts a floor', () => {
    expect(backoffDelay(0, 0, 5000, () => 0.5)).toBe(0)
    expect(backoffDelay(1, 0, 5000, () => 0)).toBe(250)
    expect(backoffDelay(1, 0, 5000, () => 1)).toBe(500)
    expect(backoffDelay(3, 0, 5000, () => 0)).toBe(1000)
    expect(backoffDelay(30, 0, 5000, () => 1)).toBe(5000)
    // Two clients with different luck wait different times.
    expect(backoffDelay(2, 0, 5000, () => 0.1)).not.toBe(backoffDelay(2, 0, 5000, () => 0.9))
    expect(backoffDelay(1, 1000, 5000, () => 0)).toBe(1000)
    expect(backoffDelay(1, 1000, 5000, () => 1)).toBe(2000)
    expect(retryHint(4429, 'too many connection attempts: retry in 750 ms')).toBe(750)
    expect(retryHint(1013, 'busy: retry in 2 s')).toBe(2000)
    expect(retryHint(1013, 'room is full')).toBeNull()
    expect(retryHint(4000, 'retry in 5 ms')).toBeNull()
  })

  /** A server that refuses every attempt its own way, recording when each arrived. */
  async function refuser(refuse: (req: http.IncomingMessage, socket: import('node:stream').Duplex, head: Buffer) => void) {
    const times: number[] = []
    const srv = http.createServer()
    srv.on('upgrade', (req, socket, head) => {
      times.push(Date.now())
      refuse(req, socket, head)
    })
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
    const port = (srv.address() as { port: number }).port
    return { url: `http://127.0.0.1:${port}`, times, close: () => srv.close() }
  }

  const gaps = (times: number[]) => times.slice(1).map((t, i) => t - times[i]!)

  it("honours a close's retry hint (4429 retry in N ms)", async () => {
    const wss = new WebSocketServer({ noServer: true })
    const r = await refuser((req, socket, head) =>
      wss.handleUpgrade(req, socket, head, (ws) => ws.close(4429, 'too many connection attempts: retry in 700 ms')),
    )
    const c = make(r.url, 'ada', { checkWorkflow: false })
    c.enterRoom('w')
    await until((cb) => {
      const t = setInterval(cb, 50)
      return () => clearInterval(t)
    }, () => r.times.length >= 3, 'three attempts')
    c.destroy()
    for (const g of gaps(r.times)) expect(g).toBeGreaterThanOrEqual(700)
    r.close()
    wss.close()
  })

  it('comes back no sooner than the floor after an upgrade refused with 503 (what a browser sees as 1006)', async () => {
    const r = await refuser((_req, socket) => {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    })
    const c = make(r.url, 'ada', { checkWorkflow: false })
    c.enterRoom('w')
    await until((cb) => {
      const t = setInterval(cb, 50)
      return () => clearInterval(t)
    }, () => r.times.length >= 3, 'three attempts')
    c.destroy()
    for (const g of gaps(r.times)) expect(g).toBeGreaterThanOrEqual(1000)
    r.close()
  })
})
