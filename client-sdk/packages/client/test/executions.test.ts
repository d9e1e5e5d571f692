import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ExecutionEvent, ExecutionHandle, ExecutionState, ResonantClient, Room } from '../src/index.js'
import { client, newWorkflow, Proxy, startServer, untilRoom, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  // Slow demo tokens, so a run is long enough to cut it mid-stream.
  server = await startServer(['--demo-delay-ms', '25'])
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

function open(url: string, name: string, wf: string): Room {
  const c = client(url, name)
  clients.push(c)
  return c.enterRoom(wf).room
}

function graph(room: Room) {
  room.workflow.transact(() => {
    room.workflow.addBlock({ id: 'in', type: 'input', position: { x: 0, y: 0 } })
    room.workflow.addBlock({ id: 'gen', type: 'ai', position: { x: 200, y: 0 }, config: { userPromptTemplate: 'Write about {{ input.topic }}', maxTokens: 60 } })
    room.workflow.addBlock({ id: 'out', type: 'output', position: { x: 400, y: 0 } })
    room.workflow.connect({ source: 'in', target: 'gen' })
    room.workflow.connect({ source: 'gen', target: 'out' })
  })
}

function untilState(h: ExecutionHandle, pred: (s: ExecutionState) => boolean, what: string, ms = 30000) {
  return new Promise<ExecutionState>((resolve, reject) => {
    if (pred(h.state())) return resolve(h.state())
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(h.state().events.map((e) => e.type))}`)), ms)
    const off = h.subscribe((s) => {
      if (pred(s)) {
        clearTimeout(timer)
        off()
        resolve(s)
      }
    })
  })
}

function checkGapless(events: ExecutionEvent[]) {
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1))
}

it('a run streams to every editor; a cut mid-run replays without duplicate or gap', async () => {
  const wf = await newWorkflow(server)
  const proxy = new Proxy(server.url)
  const url = await proxy.ready()
  const a = open(url, 'ada', wf)
  const b = open(server.url, 'bob', wf)
  await Promise.all([a.whenSynced(), b.whenSynced()])
  graph(a)
  await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'the graph to be saved')

  const run = await a.run({ input: { topic: 'rivers' }, idempotencyKey: `k-${Date.now()}` })
  await untilState(run, (s) => (s.blocks.gen?.text.length ?? 0) > 0, 'the first tokens')
  // The network drops mid-stream; events go on being produced meanwhile.
  proxy.refuse = true
  proxy.cut()
  await untilRoom(a, 'status', () => a.status === 'reconnecting', 'a to notice')
  const seenBeforeCut = run.state().seq
  proxy.refuse = false
  const done = await run.done
  expect(done.status).toBe('completed')
  checkGapless(done.events)
  expect(done.seq).toBeGreaterThan(seenBeforeCut)
  const output = done.blocks.gen.output as string
  expect(output).toContain('[demo]')
  // Streamed tokens add up to the output exactly: nothing doubled by the replay.
  expect(done.blocks.gen.text).toBe(output)
  expect(done.outputs).toEqual({ out: output })

  // B never disconnected and saw the same run (started by someone else) identically.
  const seenByB = b.executions().find((e) => e.id === run.id)!
  const bState = await seenByB.done
  expect(bState.events).toEqual(done.events)
  proxy.close()
})

it('attach after a reload gets exactly the events after its last seq', async () => {
  const wf = await newWorkflow(server)
  const a = open(server.url, 'ada', wf)
  await a.whenSynced()
  graph(a)
  const run = await a.run({ input: { topic: 'lakes' } })
  const all = (await run.done).events
  const k = Math.floor(all.length / 2)

  const reloaded = open(server.url, 'ada-again', wf)
  const h = reloaded.attach(run.id, { afterSeq: k })
  const s = await h.done
  expect(s.events).toEqual(all.slice(k))
  expect(s.seq).toBe(all.length)
})

it('invalid workflows and cancels come back as typed results', async () => {
  const wf = await newWorkflow(server)
  const a = open(server.url, 'ada', wf)
  await a.whenSynced()
  a.workflow.addBlock({ id: 'lonely', type: 'ai', position: { x: 0, y: 0 } })
  const err = await a.run().catch((e) => e)
  expect(err.code).toBe('invalid-workflow')
  expect(JSON.stringify(err.details.problems)).toContain('no-output')

  a.workflow.transact(() => {
    a.workflow.addBlock({ id: 'wait', type: 'delay', position: { x: 0, y: 100 }, config: { seconds: 60 } })
    a.workflow.addBlock({ id: 'out', type: 'output', position: { x: 200, y: 100 } })
    a.workflow.connect({ source: 'lonely', target: 'wait' })
    a.workflow.connect({ source: 'wait', target: 'out' })
  })
  const run = await a.run()
  await untilState(run, (s) => s.blocks.wait?.status === 'waiting', 'the delay to wait')
  await run.cancel()
  expect((await run.done).status).toBe('cancelled')
})

it('a retried run with a used idempotency key still ends, in a room that never saw it', async () => {
  const wf = await newWorkflow(server)
  const a = open(server.url, 'ada', wf)
  await a.whenSynced()
  graph(a)
  const key = `retry-${Date.now()}`
  const first = await (await a.run({ input: { topic: 'hills' }, idempotencyKey: key })).done
  // Say the first reply was lost with its socket: the caller retries from a fresh page.
  const b = open(server.url, 'ada-retry', wf)
  await b.whenSynced()
  const again = await b.run({ input: { topic: 'hills' }, idempotencyKey: key })
  expect(again.id).toBe(first.id)
  const s = await again.done
  expect(s.status).toBe('completed')
  expect(s.events.map((e) => e.seq)).toEqual(first.events.map((e) => e.seq))
})
