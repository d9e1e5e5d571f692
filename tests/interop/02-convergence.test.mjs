// Concurrent editing: ten clients making random edits converge; offline edits merge on
// reconnect.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  Y, harness, uniqueRoom, waitSynced, waitFor, waitContent, makeBlock, makeConnection,
  workflowJSON, blockIds, canonicalJSON, prng
} from './helpers.mjs'

const tick = () => new Promise((resolve) => setImmediate(resolve))

test('10 clients making concurrent random edits converge to identical state', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('converge')
  const seed = Number(process.env.INTEROP_SEED ?? (Date.now() % 1e9))
  t.diagnostic(`seed ${seed} (INTEROP_SEED=${seed} replays the same edit choices)`)
  const rnd = prng(seed)
  const N = 10
  const OPS = 40
  const clients = Array.from({ length: N }, () => h.provider(server, room))
  await Promise.all(clients.map((p) => waitSynced(p)))

  // Every client runs its own edit loop; yielding to the event loop between edits lets
  // remote updates arrive in the middle, so edits really are concurrent and interleaved.
  let nextId = 0
  const runClient = async (p, k) => {
    const doc = p.doc
    const blocks = doc.getArray('blocks')
    for (let i = 0; i < OPS; i++) {
      const op = rnd.int(10)
      doc.transact(() => {
        if (op < 4 || blocks.length === 0) {
          const id = `c${k}-${nextId++}`
          blocks.insert(rnd.int(blocks.length + 1), [makeBlock({ id, x: rnd.int(1000), y: rnd.int(1000), label: id })])
        } else if (op < 6) {
          const at = rnd.int(blocks.length)
          blocks.delete(at, Math.min(1 + rnd.int(2), blocks.length - at))
        } else if (op < 8) {
          const block = blocks.get(rnd.int(blocks.length))
          block.get('position').set('x', rnd.int(1000))
          block.get('data').set('label', `edited by ${k} #${i}`)
        } else if (op < 9) {
          const block = blocks.get(rnd.int(blocks.length))
          block.get('config').set(`key${rnd.int(3)}`, { by: k, i })
        } else {
          doc.getArray('connections').push([makeConnection(`c${k}`, `op${i}`)])
          doc.getMap('meta').set('lastWriter', k)
        }
      })
      // Vary the interleaving: mostly back-to-back, sometimes wait for the network.
      const pause = rnd.int(4)
      if (pause === 0) await tick()
      else if (pause === 1) await new Promise((resolve) => setTimeout(resolve, rnd.int(5)))
    }
    // A final marker per client, so convergence must include every client's last edit.
    doc.getMap('meta').set(`done-${k}`, OPS)
  }
  await Promise.all(clients.map((p, k) => runClient(p, k)))

  const docs = clients.map((p) => p.doc)
  const sameState = () => {
    const first = canonicalJSON(workflowJSON(docs[0]))
    const sv0 = Buffer.from(Y.encodeStateVector(docs[0])).toString('base64')
    return docs.every((d) => {
      const meta = d.getMap('meta')
      for (let k = 0; k < N; k++) if (meta.get(`done-${k}`) !== OPS) return false
      return Buffer.from(Y.encodeStateVector(d)).toString('base64') === sv0 &&
        canonicalJSON(workflowJSON(d)) === first
    })
  }
  sameState.describe = () => docs.map((d) => `${d.getArray('blocks').length} blocks/${Object.keys(d.getMap('meta').toJSON()).length} meta`).join(', ')
  await waitFor(docs.map((d) => [d, 'update']), sameState, { timeout: 30000, label: '10 clients to converge' })

  // The converged state must be exactly what the server hands a fresh joiner.
  const expected = workflowJSON(docs[0])
  const late = h.provider(server, room)
  await waitSynced(late)
  await waitContent([late.doc], workflowJSON, expected, { label: 'a fresh joiner to see the converged state' })
  // And each client's full update, re-applied to a fresh doc, gives the same JSON.
  for (const d of docs) {
    const copy = new Y.Doc()
    Y.applyUpdate(copy, Y.encodeStateAsUpdate(d))
    assert.equal(canonicalJSON(workflowJSON(copy)), canonicalJSON(expected))
  }
  // Sanity: the random run really did something.
  assert.ok(nextId > 20, `only ${nextId} inserts`)
})

test('offline edits on both sides merge after reconnect', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('offline')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])
  a.doc.getArray('blocks').push([
    makeBlock({ id: 'shared-1', label: 'original' }),
    makeBlock({ id: 'shared-2', label: 'to be deleted offline' })
  ])
  await waitFor([[b.doc, 'update']], () => b.doc.getArray('blocks').length === 2, { label: 'initial blocks at B' })

  // A goes offline and edits; B stays online and edits the same document meanwhile.
  a.disconnect()
  assert.equal(a.wsconnected, false)
  a.doc.transact(() => {
    a.doc.getArray('blocks').push([makeBlock({ id: 'offline-a', label: 'made offline by A' })])
    a.doc.getArray('blocks').get(0).get('data').set('label', 'renamed offline by A')
    a.doc.getArray('blocks').delete(1, 1)
    a.doc.getArray('connections').push([makeConnection('shared-1', 'offline-a')])
  })
  a.doc.getMap('meta').set('a-offline', true)
  b.doc.transact(() => {
    b.doc.getArray('blocks').insert(0, [makeBlock({ id: 'online-b', label: 'made by B while A was away' })])
    b.doc.getArray('blocks').get(1).get('position').set('x', 999)
    b.doc.getArray('connections').push([makeConnection('online-b', 'shared-1')])
  })
  b.doc.getMap('meta').set('b-online', true)
  // A third client that joins while A is offline sees B's edits only.
  const c = h.provider(server, room)
  await waitSynced(c)
  await waitFor([[c.doc, 'update']], () => blockIds(c.doc).includes('online-b'), { label: 'B\'s edit at C' })
  assert.ok(!blockIds(c.doc).includes('offline-a'), 'A\'s offline edit leaked before reconnect')

  a.connect()
  await waitSynced(a)
  const expectedIds = ['online-b', 'shared-1', 'offline-a']
  await waitFor([[a.doc, 'update'], [b.doc, 'update'], [c.doc, 'update']], () =>
    [a, b, c].every((p) => blockIds(p.doc).join() === expectedIds.join() &&
      p.doc.getMap('meta').get('a-offline') === true && p.doc.getMap('meta').get('b-online') === true),
  { label: 'offline and online edits merged everywhere' })
  const merged = workflowJSON(a.doc)
  await waitContent([b.doc, c.doc], workflowJSON, merged, { label: 'identical merged state' })
  const shared = a.doc.getArray('blocks').get(1)
  assert.equal(shared.get('data').get('label'), 'renamed offline by A')
  assert.equal(shared.get('position').get('x'), 999)
  assert.equal(a.doc.getArray('connections').length, 2)
})
