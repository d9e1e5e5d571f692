// Executions with the real npm clients: a workflow built by a stock y-websocket editor (nested
// Y.Maps, as editors make them) runs on the server; an opted-in raw client receives the
// events in seq order; a stock provider in the same room receives no extension message at all
// and keeps syncing.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  harness, waitSynced, waitFor, makeBlock, makeConnection, encoding,
  MSG_STATELESS, messageType, decoding
} from './helpers.mjs'

async function api (server, method, path, body) {
  const res = await fetch(`${server.httpUrl}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : null }
}

function statelessJSON (frame) {
  const d = decoding.createDecoder(frame)
  decoding.readVarUint(d)
  return JSON.parse(decoding.readVarString(d))
}

test('a run streams ordered events to an opted-in client and none to a stock provider', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const spaces = await api(server, 'GET', '/api/v1/workspaces')
  const ws = spaces.body.items[0].id
  const wf = (await api(server, 'POST', `/api/v1/workspaces/${ws}/workflows`, { name: 'interop' })).body.id
  const room = `workflow-${wf}`

  const editor = h.provider(server, room)
  const stock = h.provider(server, room)
  await Promise.all([waitSynced(editor), waitSynced(stock)])
  const stockTypes = []
  stock.ws.addEventListener('message', (ev) => {
    const data = ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : new Uint8Array(ev.data)
    stockTypes.push(messageType(data))
  })

  editor.doc.transact(() => {
    editor.doc.getArray('blocks').push([
      makeBlock({ id: 'in', type: 'input' }),
      makeBlock({ id: 'shout', type: 'transform', config: { template: '{{ input.name | upper }}!' } }),
      makeBlock({ id: 'gen', type: 'ai', config: { userPromptTemplate: 'About {{ upstream }}', provider: 'demo' } }),
      makeBlock({ id: 'out', type: 'output' })
    ])
    editor.doc.getArray('connections').push([
      makeConnection('in', 'shout'), makeConnection('shout', 'gen'), makeConnection('gen', 'out')
    ])
  })
  // The server has the graph once the stock provider has it.
  await waitFor([[stock.doc, 'update']], () => stock.doc.getArray('connections').length === 3, { label: 'graph at the server' })

  const watcher = h.raw(server.roomUrl(room), { speak: true })
  await watcher.opened
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_STATELESS)
  encoding.writeVarString(enc, JSON.stringify({ type: 'execution.start', input: { name: 'ada' }, requestId: 'go' }))
  watcher.send(encoding.toUint8Array(enc))

  const events = () => watcher.received
    .filter((f) => messageType(f) === MSG_STATELESS)
    .map(statelessJSON)
  await waitFor([[watcher, 'frame']], () => events().some((e) => e.type === 'execution.completed' || e.type === 'execution.failed'), { label: 'execution ends', timeout: 20000 })
  const accepted = events().find((e) => e.type === 'execution.accepted')
  assert.equal(accepted.requestId, 'go')
  const run = events().filter((e) => e.executionId === accepted.executionId && e.seq !== undefined)
  assert.deepEqual(run.map((e) => e.seq), run.map((_, i) => i + 1), 'gapless seqs in order')
  const done = run.at(-1)
  assert.equal(done.type, 'execution.completed', JSON.stringify(done))
  assert.match(done.outputs.out, /^\[demo\]/)
  const streamed = run.filter((e) => e.type === 'block.delta').map((e) => e.text).join('')
  assert.equal(streamed, done.outputs.out, 'the deltas add up to the output')

  // The stock provider saw no extension message, and still syncs both ways.
  stock.doc.getMap('meta').set('after', 1)
  await waitFor([[editor.doc, 'update']], () => editor.doc.getMap('meta').get('after') === 1, { label: 'stock edit reaches the editor' })
  assert.ok(stockTypes.length > 0, 'the stock provider received frames')
  assert.deepEqual(stockTypes.filter((t) => t === 5 || t === 8), [], 'no extension messages to a stock client')
  assert.ok(stock.synced)
})
