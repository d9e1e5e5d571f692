// Shared helpers for the resonant interop tests: run the real server binary, connect the real
// npm y-websocket / yjs clients (and a hand-rolled raw protocol client), and wait for
// conditions event by event instead of sleeping.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import readline from 'node:readline'
import { EventEmitter } from 'node:events'
import { fileURLToPath } from 'node:url'

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

import { MSG_SYNC, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC_STATUS, SYNC_STEP2, SYNC_UPDATE } from './protocol.mjs'

export { Y, WebSocket, WebsocketProvider, encoding, decoding, syncProtocol, awarenessProtocol }
// The protocol's constants, from the SDK's protocol.ts.
export * from './protocol.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

// ---------------------------------------------------------------------------------------------
// The server binary
// ---------------------------------------------------------------------------------------------

/** Path of the resonant binary: $RESONANT_BIN, ../../target/debug, $CARGO_TARGET_DIR/debug. */
export function resonantBin () {
  const candidates = []
  if (process.env.RESONANT_BIN) candidates.push(path.resolve(process.env.RESONANT_BIN))
  candidates.push(path.resolve(here, '../../target/debug/resonant'))
  if (process.env.CARGO_TARGET_DIR) {
    candidates.push(path.resolve(process.env.CARGO_TARGET_DIR, 'debug/resonant'))
  }
  for (const c of candidates) {
    if (existsSync(c)) return c
  }
  throw new Error(
    `resonant binary not found (tried ${candidates.join(', ')}); build it with cargo build ` +
    'and/or set RESONANT_BIN'
  )
}

/** The Postgres URL for the Postgres variants, or undefined when they should be skipped. */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || undefined

// Every WebsocketProvider adds a process 'exit' listener; tests open hundreds.
process.setMaxListeners(0)

const liveChildren = new Set()
// A test process that dies (or is cut short by the runner) must not leave servers behind.
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/** A unique room name (shared Postgres database: never reuse names across runs). */
export function uniqueRoom (prefix = 'room') {
  return `${prefix}-${Date.now().toString(36)}-${crypto.randomBytes(5).toString('hex')}`
}

export async function makeTempDir (prefix = 'resonant-interop-') {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix))
}

/**
 * A running `resonant serve` process.
 */
export class ServerProcess {
  constructor (child, port, dataDir, stderrTail) {
    this.child = child
    this.port = port
    this.dataDir = dataDir
    this._stderr = stderrTail
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve({ code: child.exitCode, signal: child.signalCode })
      } else {
        child.once('exit', (code, signal) => resolve({ code, signal }))
      }
    })
  }

  get pid () { return this.child.pid }
  get wsUrl () { return `ws://127.0.0.1:${this.port}/sync` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  roomUrl (room) { return `${this.wsUrl}/${room}` }

  /** Whether the process is still running. */
  get alive () { return this.child.exitCode === null && this.child.signalCode === null }

  /** The last part of the server's stderr (its logs), for failure messages. */
  stderr () { return this._stderr.join('') }

  /** SIGTERM, then wait for the process to exit (SIGKILL after `timeoutMs`). */
  async stop (timeoutMs = 15000) {
    if (!this.alive) return this.exited
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => { if (this.alive) this.child.kill('SIGKILL') }, timeoutMs)
    try {
      return await this.exited
    } finally {
      clearTimeout(timer)
    }
  }

  /** SIGKILL (kill -9) and wait for the process to be gone. */
  async kill9 () {
    if (this.alive) this.child.kill('SIGKILL')
    return this.exited
  }
}

/**
 * Starts `resonant serve --port 0 --data-dir DIR [args…]` and resolves once it printed its
 * `resonant listening on 127.0.0.1:PORT` line. Rejects (with its stderr) if it exits first.
 */
export async function startServer ({ dataDir, databaseUrl, args = [], timeoutMs = 30000 } = {}) {
  const bin = resonantBin()
  const dir = dataDir ?? await makeTempDir()
  const argv = ['serve', '--port', '0', '--data-dir', dir]
  if (databaseUrl) argv.push('--database-url', databaseUrl)
  argv.push(...args)
  const env = { ...process.env, RESONANT_LOG: process.env.RESONANT_LOG ?? 'info' }
  // Do not let a DATABASE_URL from the environment silently pick the store for us.
  delete env.DATABASE_URL
  const child = spawn(bin, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
  const stderrTail = []
  let stderrLen = 0
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    stderrTail.push(chunk)
    stderrLen += chunk.length
    while (stderrLen > 64 * 1024 && stderrTail.length > 1) stderrLen -= stderrTail.shift().length
  })
  const lines = readline.createInterface({ input: child.stdout })
  const stdoutLines = []
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`resonant did not print its listening line within ${timeoutMs} ms\n` +
        `stdout: ${stdoutLines.join('\n')}\nstderr: ${stderrTail.join('')}`))
    }, timeoutMs)
    lines.on('line', (line) => {
      stdoutLines.push(line)
      const m = /^resonant listening on 127\.0\.0\.1:(\d+)$/.exec(line)
      if (m) {
        clearTimeout(timer)
        resolve(Number(m[1]))
      }
    })
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      // Give the stderr pipe a moment to drain into the message.
      setImmediate(() => reject(new Error(
        `resonant exited (code ${code}, signal ${signal}) before listening: ${argv.join(' ')}\n` +
        `stderr: ${stderrTail.join('')}`)))
    })
  })
  return new ServerProcess(child, port, dir, stderrTail)
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/**
 * Resolves once `predicate()` is truthy, re-checking it whenever one of `sources` emits one
 * of its events. `sources` is a list of `[emitter, eventName]`; emitters need on/off (lib0
 * Observable, ObservableV2, Node EventEmitter). Rejects after `timeout` ms with `label`.
 */
export function waitFor (sources, predicate, { timeout = 10000, label = 'condition' } = {}) {
  return new Promise((resolve, reject) => {
    let done = false
    const subs = []
    const finish = (err, value) => {
      if (done) return
      done = true
      clearTimeout(timer)
      for (const [emitter, event, fn] of subs) emitter.off(event, fn)
      if (err) reject(err)
      else resolve(value)
    }
    const check = () => {
      if (done) return
      let v
      try {
        v = predicate()
      } catch (e) {
        return finish(e)
      }
      if (v) finish(null, v)
    }
    const timer = setTimeout(() => {
      let detail = ''
      try { detail = String(predicate.describe?.() ?? '') } catch {}
      finish(new Error(`timed out after ${timeout} ms waiting for ${label}${detail ? ': ' + detail : ''}`))
    }, timeout)
    for (const [emitter, event] of sources) {
      const fn = () => check()
      emitter.on(event, fn)
      subs.push([emitter, event, fn])
    }
    check()
  })
}

/** Resolves like `promise`, or rejects after `timeout` ms (the timer never outlives it). */
export function withTimeout (promise, timeout, label) {
  let timer
  return Promise.race([
    promise,
    new Promise((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms waiting for ${label}`)), timeout)
    })
  ]).finally(() => clearTimeout(timer))
}

/** Waits until the provider has completed the initial sync with the server. */
export function waitSynced (provider, timeout = 15000) {
  return waitFor([[provider, 'sync']], () => provider.synced && provider.wsconnected,
    { timeout, label: `provider for ${provider.roomname} to sync` })
}

/** JSON with object keys sorted at every level (Y.Map key order differs between replicas). */
export function canonicalJSON (value) {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v)
}

/** Waits until every doc's content `fn(doc)` equals `expected` (compared with canonicalJSON). */
export function waitContent (docs, fn, expected, { timeout = 15000, label = 'documents to converge' } = {}) {
  const want = canonicalJSON(expected)
  const pred = () => docs.every((d) => canonicalJSON(fn(d)) === want)
  pred.describe = () => 'want ' + want.slice(0, 300) + ' have ' +
    docs.map((d) => canonicalJSON(fn(d)).slice(0, 300)).join(' | ')
  return waitFor(docs.map((d) => [d, 'update']), pred, { timeout, label })
}

// ---------------------------------------------------------------------------------------------
// Workflow documents
// ---------------------------------------------------------------------------------------------

/** A workflow block: Y.Map with id/type/position{x,y}/data{label}/config. */
export function makeBlock ({ id, type = 'agent', x = 0, y = 0, label = id, config = {} }) {
  const block = new Y.Map()
  block.set('id', id)
  block.set('type', type)
  const position = new Y.Map()
  position.set('x', x)
  position.set('y', y)
  block.set('position', position)
  const data = new Y.Map()
  data.set('label', label)
  block.set('data', data)
  const cfg = new Y.Map()
  for (const [k, v] of Object.entries(config)) cfg.set(k, v)
  block.set('config', cfg)
  return block
}

/** A workflow connection between two blocks (plain JSON in a Y.Array). */
export function makeConnection (from, to) {
  return { id: `${from}->${to}`, source: from, target: to }
}

/** The document's known roots as plain JSON (deterministic across replicas). */
export function workflowJSON (doc) {
  return {
    blocks: doc.getArray('blocks').toJSON(),
    connections: doc.getArray('connections').toJSON(),
    meta: sortKeys(doc.getMap('meta').toJSON())
  }
}

function sortKeys (obj) {
  return Object.fromEntries(Object.keys(obj).sort().map((k) => [k, obj[k]]))
}

/** Block ids in array order. */
export function blockIds (doc) {
  return doc.getArray('blocks').toArray().map((b) => b.get('id'))
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/**
 * Connects a stock WebsocketProvider (BroadcastChannel off: in one Node process it would
 * sync providers of the same room directly, bypassing the server under test).
 */
export function connectProvider (server, room, { doc = new Y.Doc(), connect = true, ...opts } = {}) {
  return new WebsocketProvider(server.wsUrl, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect,
    ...opts
  })
}

/**
 * Turns on save acknowledgements for a stock provider: sends `[8, 1]` on every (re)connect,
 * counts the document messages (sync step 2 / update) it sends after opting in, and the
 * `[8, 1]` acknowledgements it receives. `acks.events` emits 'ack' and 'sent'.
 */
export function enableAcks (provider) {
  const state = {
    sent: 0,
    acks: 0,
    unexpected: [],
    events: new EventEmitter(),
    onAck: null
  }
  state.events.setMaxListeners(0)
  const hook = () => {
    const ws = provider.ws
    if (!ws || ws._ackHooked) return
    ws._ackHooked = true
    ws.send(new Uint8Array([MSG_SYNC_STATUS, 1]))
    const send = ws.send.bind(ws)
    ws.send = (buf, ...rest) => {
      const bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf)
      if (isDocumentMessage(bytes)) {
        state.sent++
        state.events.emit('sent', state.sent)
      }
      return send(buf, ...rest)
    }
  }
  provider.on('status', ({ status }) => { if (status === 'connected') hook() })
  if (provider.wsconnected) hook()
  provider.messageHandlers[MSG_SYNC_STATUS] = (_encoder, decoder, _provider, _emitSynced, _messageType) => {
    const status = decoding.readVarUint(decoder)
    if (status === 1) {
      state.acks++
      if (state.onAck) state.onAck(state.acks)
      state.events.emit('ack', state.acks)
    } else {
      state.unexpected.push(status)
      state.events.emit('ack', state.acks)
    }
  }
  return state
}

/** True for `[0, 1, …]` (sync step 2) and `[0, 2, …]` (update). */
export function isDocumentMessage (bytes) {
  if (bytes.length < 2) return false
  const d = decoding.createDecoder(bytes)
  if (decoding.readVarUint(d) !== MSG_SYNC) return false
  const sub = decoding.readVarUint(d)
  return sub === SYNC_STEP2 || sub === SYNC_UPDATE
}

/** The top-level message type of a frame (varuint). */
export function messageType (bytes) {
  return decoding.readVarUint(decoding.createDecoder(bytes))
}

/**
 * A raw `ws` socket (no y-websocket) that records every frame and the close code. Optionally
 * speaks the protocol by hand (`speak: true`): answers the server's step 1 with step 2, applies
 * step 2 / updates to `this.doc`, sends local doc changes as updates, applies awareness.
 * `optIn: true` sends `[8, 1]` as the very first frame.
 */
export class RawClient extends EventEmitter {
  constructor (url, { speak = false, optIn = false } = {}) {
    super()
    this.setMaxListeners(0)
    this.url = url
    this.doc = new Y.Doc()
    this.awareness = new awarenessProtocol.Awareness(this.doc)
    this.received = [] // Uint8Array frames
    this.receivedTypes = []
    this.textFrames = 0
    this.docMessagesSent = 0
    this.acks = 0
    this.errors = []
    this.closeInfo = null
    this.synced = false
    this.ws = new WebSocket(url)
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('close', (code) => reject(new Error(`socket closed (${code}) before opening`)))
    })
    this.opened.catch(() => {})
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        this.emit('closed', this.closeInfo)
        resolve(this.closeInfo)
      })
    })
    this.ws.on('error', (err) => { this.errors.push(err) })
    this.ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        this.textFrames++
        this.emit('frame')
        return
      }
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      const copy = new Uint8Array(bytes)
      this.received.push(copy)
      const type = messageType(copy)
      this.receivedTypes.push(type)
      if (type === MSG_SYNC_STATUS) {
        const d = decoding.createDecoder(copy)
        decoding.readVarUint(d)
        if (decoding.readVarUint(d) === 1) this.acks++
      }
      if (speak) this._handle(copy, type)
      this.emit('frame', copy, type)
    })
    // Opting in must happen in the 'open' handler itself: `ws` may deliver the server's
    // greeting (and we may answer it with a step 2) before an `await opened` resumes.
    if (optIn) this.ws.once('open', () => this.optIn())
    if (speak) {
      this.doc.on('update', (update, origin) => {
        if (origin === this) return
        this.sendUpdate(update)
      })
      this.ws.once('open', () => {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MSG_SYNC)
        syncProtocol.writeSyncStep1(enc, this.doc)
        this.send(encoding.toUint8Array(enc))
      })
    }
  }

  _handle (bytes, type) {
    const decoder = decoding.createDecoder(bytes)
    decoding.readVarUint(decoder)
    if (type === MSG_SYNC) {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MSG_SYNC)
      const sub = syncProtocol.readSyncMessage(decoder, encoder, this.doc, this)
      if (sub === SYNC_STEP2) {
        this.synced = true
        this.emit('synced')
      }
      if (encoding.length(encoder) > 1) this.send(encoding.toUint8Array(encoder))
    } else if (type === MSG_AWARENESS) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this)
    }
  }

  /** Sends a binary frame, counting document messages. */
  send (bytes) {
    if (isDocumentMessage(bytes)) this.docMessagesSent++
    this.ws.send(bytes)
  }

  sendUpdate (update) {
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_SYNC)
    syncProtocol.writeUpdate(enc, update)
    this.send(encoding.toUint8Array(enc))
  }

  sendAwareness (state) {
    this.awareness.setLocalState(state)
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_AWARENESS)
    encoding.writeVarUint8Array(enc,
      awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
    this.send(encoding.toUint8Array(enc))
  }

  sendQueryAwareness () {
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_QUERY_AWARENESS)
    this.send(encoding.toUint8Array(enc))
  }

  /** Opts in to save acknowledgements. */
  optIn () {
    this.send(new Uint8Array([MSG_SYNC_STATUS, 1]))
  }

  get isOpen () { return this.ws.readyState === WebSocket.OPEN }

  close () {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate()
    }
    this.awareness.destroy()
    this.doc.destroy()
  }
}

// ---------------------------------------------------------------------------------------------
// Per-test resource tracking
// ---------------------------------------------------------------------------------------------

/**
 * Tracks what a test started and tears it all down in `t.after`: providers and raw clients
 * first, then servers (SIGKILL if still running), then temp dirs.
 */
export function harness (t) {
  const providers = []
  const raws = []
  const servers = []
  const dirs = []
  const h = {
    async server (opts = {}) {
      let dataDir = opts.dataDir
      if (!dataDir) {
        dataDir = await makeTempDir()
        dirs.push(dataDir)
      }
      const s = await startServer({ ...opts, dataDir })
      servers.push(s)
      return s
    },
    async tempDir () {
      const d = await makeTempDir()
      dirs.push(d)
      return d
    },
    provider (server, room, opts) {
      const p = connectProvider(server, room, opts)
      providers.push(p)
      return p
    },
    raw (url, opts) {
      const r = new RawClient(url, opts)
      raws.push(r)
      return r
    },
    destroyProvider (p) {
      try { p.destroy() } catch {}
      try { p.doc.destroy() } catch {}
    }
  }
  t.after(async () => {
    for (const p of providers) h.destroyProvider(p)
    for (const r of raws) { try { r.close() } catch {} }
    await Promise.all(servers.map((s) => s.kill9()))
    await Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true })))
  })
  return h
}

/** A small deterministic PRNG (mulberry32) so random tests can be replayed from their seed. */
export function prng (seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    next,
    int: (n) => Math.floor(next() * n),
    bytes: (n) => {
      const out = new Uint8Array(n)
      for (let i = 0; i < n; i++) out[i] = Math.floor(next() * 256)
      return out
    }
  }
}
