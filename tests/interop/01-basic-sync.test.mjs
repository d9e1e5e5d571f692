// Two stock y-websocket clients edit a workflow document through resonant; a late joiner
// receives the whole state.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  Y, harness, uniqueRoom, waitSynced, waitFor, waitContent, makeBlock, makeConnection,
  workflowJSON, blockIds
} from './helpers.mjs'

test('two clients sync an edit both ways', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('workflow')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])

  // A adds two blocks and a connection in one transaction.
  a.doc.transact(() => {
    a.doc.getArray('blocks').push([
      makeBlock({ id: 'start', type: 'starter', x: 10, y: 20, label: 'Start', config: { trigger: 'manual' } }),
      makeBlock({ id: 'agent-1', type: 'agent', x: 300, y: 20, label: 'Agent', config: { model: 'gpt', temperature: 0.2 } })
    ])
    a.doc.getArray('connections').push([makeConnection('start', 'agent-1')])
  })
  await waitFor([[b.doc, 'update']], () => blockIds(b.doc).join() === 'start,agent-1',
    { label: 'A\'s blocks at B' })
  assert.deepEqual(workflowJSON(b.doc), workflowJSON(a.doc))
  const agentAtB = b.doc.getArray('blocks').get(1)
  assert.equal(agentAtB.get('type'), 'agent')
  assert.deepEqual(agentAtB.get('position').toJSON(), { x: 300, y: 20 })
  assert.equal(agentAtB.get('data').get('label'), 'Agent')
  assert.deepEqual(agentAtB.get('config').toJSON(), { model: 'gpt', temperature: 0.2 })
  assert.deepEqual(b.doc.getArray('connections').toJSON(),
    [{ id: 'start->agent-1', source: 'start', target: 'agent-1' }])

  // B moves a block, renames it, and adds a block and a connection; A must see all of it.
  b.doc.transact(() => {
    const block = b.doc.getArray('blocks').get(1)
    block.get('position').set('x', 420)
    block.get('data').set('label', 'Renamed by B')
  })
  b.doc.transact(() => {
    b.doc.getArray('blocks').insert(1, [makeBlock({ id: 'cond-1', type: 'condition', x: 200, y: 200 })])
    b.doc.getArray('connections').push([makeConnection('agent-1', 'cond-1')])
  })
  await waitContent([a.doc, b.doc], workflowJSON, workflowJSON(b.doc), { label: 'B\'s edits at A' })
  assert.deepEqual(blockIds(a.doc), ['start', 'cond-1', 'agent-1'])
  const agentAtA = a.doc.getArray('blocks').get(2)
  assert.equal(agentAtA.get('position').get('x'), 420)
  assert.equal(agentAtA.get('data').get('label'), 'Renamed by B')
  assert.equal(a.doc.getArray('connections').length, 2)

  // And a delete from A reaches B.
  a.doc.getArray('blocks').delete(0, 1)
  await waitFor([[b.doc, 'update']], () => blockIds(b.doc).join() === 'cond-1,agent-1',
    { label: 'A\'s delete at B' })
  assert.deepEqual(workflowJSON(b.doc), workflowJSON(a.doc))
})

test('a late joiner gets the full state (room loaded, and reloaded from the store)', async (t) => {
  const h = harness(t)
  // Grace 0: once the last client leaves the room unloads, so the third joiner loads it back.
  const server = await h.server({ args: ['--room-grace-secs', '0'] })
  const room = uniqueRoom('late')
  const a = h.provider(server, room)
  await waitSynced(a)
  // Many separate transactions, so the late joiner needs the whole history, not one update.
  for (let i = 0; i < 40; i++) {
    a.doc.getArray('blocks').push([makeBlock({ id: `b${i}`, x: i * 10, y: i, label: `Block ${i}`, config: { n: i } })])
    if (i > 0) a.doc.getArray('connections').push([makeConnection(`b${i - 1}`, `b${i}`)])
  }
  a.doc.getArray('blocks').delete(5, 3)
  a.doc.getArray('blocks').get(0).get('data').set('label', 'first')
  a.doc.getMap('meta').set('name', 'Workflow with history')
  const expected = workflowJSON(a.doc)

  const b = h.provider(server, room)
  await waitSynced(b)
  await waitContent([b.doc], workflowJSON, expected, { label: 'late joiner B to have the full state' })
  assert.equal(b.doc.getArray('blocks').length, 37)
  assert.equal(b.doc.getArray('connections').length, 39)

  // Everyone leaves; a new client must get the same state back from the store.
  h.destroyProvider(a)
  h.destroyProvider(b)
  const c = h.provider(server, room)
  await waitSynced(c)
  await waitContent([c.doc], workflowJSON, expected, { label: 'joiner C (after everyone left) to have the full state' })
  // The state must also be the same bytes-equivalent doc: applying C's state to a fresh doc.
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(c.doc))
  assert.deepEqual(workflowJSON(copy), expected)
})
