// Two editors against the real server, editing apart (one cut off) and then syncing: the
// repaired document is what the server's engine runs.
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ResonantClient, Room } from '../src/index.js'
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

function open(url: string, name: string, wf: string): Room {
  const c = client(url, name)
  clients.push(c)
  return c.enterRoom(wf).room
}

const edges = (r: Room) => JSON.stringify(r.doc.getArray('connections').toJSON())

it('concurrent connect / remove / duplicate edges: both editors repair alike and Run is accepted', async () => {
  const wf = await newWorkflow(server)
  const proxy = new Proxy(server.url)
  const url = await proxy.ready()
  const a = open(server.url, 'ada', wf)
  const b = open(url, 'bob', wf)
  await Promise.all([a.whenSynced(), b.whenSynced()])
  a.workflow.transact(() => {
    a.workflow.addBlock({ id: 'in', type: 'input', position: { x: 0, y: 0 } })
    a.workflow.addBlock({ id: 'gen', type: 'ai', position: { x: 200, y: 0 }, config: { userPromptTemplate: 'Write about {{ input.topic }}', maxTokens: 20 } })
    a.workflow.addBlock({ id: 'extra', type: 'transform', position: { x: 200, y: 200 }, config: { template: '{{ gen }}' } })
    a.workflow.addBlock({ id: 'out', type: 'output', position: { x: 400, y: 0 } })
    a.workflow.connect({ source: 'in', target: 'gen' })
    a.workflow.connect({ source: 'gen', target: 'out' })
  })
  await untilDoc(b, () => b.workflow.connections().length === 2 && !!b.workflow.block('extra'), 'bob to see the graph')

  // Bob is cut off; meanwhile Ada wires `extra` in, and Bob deletes it. Both draw in → out.
  proxy.refuse = true
  proxy.cut()
  await untilRoom(b, 'status', () => b.status === 'reconnecting', 'bob to notice the cut')
  a.workflow.connect({ source: 'gen', target: 'extra' })
  a.workflow.connect({ source: 'extra', target: 'out' })
  a.workflow.connect({ source: 'in', target: 'out' })
  b.workflow.removeBlock('extra')
  b.workflow.connect({ source: 'in', target: 'out' })
  proxy.refuse = false

  const settled = (r: Room) =>
    !r.workflow.block('extra') &&
    r.workflow.connections().length === 3 &&
    r.workflow.connections().every((c) => r.workflow.connectionProblem(c) === null)
  // Re-checked on either document's transactions: the last change may land on either side.
  const onEither = (cb: () => void) => {
    a.doc.on('afterTransaction', cb)
    b.doc.on('afterTransaction', cb)
    return () => {
      a.doc.off('afterTransaction', cb)
      b.doc.off('afterTransaction', cb)
    }
  }
  await until(onEither, () => settled(a) && settled(b) && edges(a) === edges(b), 'both editors to converge on a valid graph')
  expect(a.workflow.connections().map((c) => `${c.source}>${c.target}`).sort()).toEqual(['gen>out', 'in>gen', 'in>out'])
  await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'ada’s repair to be stored')
  await untilRoom(b, 'save', () => b.saveStatus === 'saved', 'bob’s repair to be stored')

  // The server validates the document it holds: no dangling-connection any more.
  const run = await a.run({ input: { topic: 'rivers' } })
  expect((await run.done).status).toBe('completed')
  proxy.close()
})
