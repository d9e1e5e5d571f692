// Awareness (presence): states are relayed, late joiners get them, and the server removes a
// connection's states when its socket closes.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { harness, uniqueRoom, waitSynced, waitFor } from './helpers.mjs'

/** Records every awareness 'change' event of a provider. */
function recordChanges (provider) {
  const events = []
  provider.awareness.on('change', (change, origin) => events.push({ ...change, origin }))
  return events
}

test('awareness: states are relayed, and removed when the socket that set them closes', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('presence')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])
  const aId = a.doc.clientID
  const bId = b.doc.clientID
  const bEvents = recordChanges(b)

  const aState = { user: { name: 'Alice', color: '#ff0000' }, cursor: { blockId: 'agent-1', x: 12, y: 34 } }
  a.awareness.setLocalState(aState)
  b.awareness.setLocalState({ user: { name: 'Bob', color: '#00ff00' } })
  await waitFor([[b.awareness, 'change']], () => b.awareness.getStates().has(aId),
    { label: 'A\'s awareness state at B' })
  assert.deepEqual(b.awareness.getStates().get(aId), aState)
  await waitFor([[a.awareness, 'change']], () => a.awareness.getStates().get(bId)?.user?.name === 'Bob',
    { label: 'B\'s awareness state at A' })

  // An update of A's state (cursor moves) replaces the old one at B.
  a.awareness.setLocalStateField('cursor', { blockId: 'cond-1', x: 1, y: 2 })
  await waitFor([[b.awareness, 'change']], () => b.awareness.getStates().get(aId)?.cursor?.blockId === 'cond-1',
    { label: 'A\'s moved cursor at B' })

  // A late joiner receives everyone's current state when it connects.
  const c = h.provider(server, room)
  await waitSynced(c)
  await waitFor([[c.awareness, 'change']], () =>
    c.awareness.getStates().get(aId)?.cursor?.blockId === 'cond-1' &&
    c.awareness.getStates().get(bId)?.user?.name === 'Bob',
  { label: 'A\'s and B\'s states at late joiner C' })

  // A's socket dies without A saying goodbye (no null-state awareness message): the server
  // must notice and broadcast the removal. y-protocols itself would only time A out after
  // 30 s, so removal within 5 s, delivered by the provider (origin b), comes from the server.
  const before = bEvents.length
  a.shouldConnect = false
  a.ws.terminate()
  const removal = await waitFor([[b.awareness, 'change']], () =>
    bEvents.slice(before).find((e) => e.removed.includes(aId)),
  { timeout: 5000, label: 'B to see A\'s awareness state removed' })
  assert.equal(removal.origin, b, 'the removal should come from a server message')
  assert.equal(b.awareness.getStates().has(aId), false)
  await waitFor([[c.awareness, 'change']], () => !c.awareness.getStates().has(aId),
    { timeout: 5000, label: 'C to see A\'s awareness state removed' })
  // B's and C's own states are untouched.
  assert.equal(c.awareness.getStates().get(bId)?.user?.name, 'Bob')

  // A client that leaves cleanly (destroy sends a null state) is removed as well.
  const cId = c.doc.clientID
  c.awareness.setLocalState({ user: { name: 'Carol' } })
  await waitFor([[b.awareness, 'change']], () => b.awareness.getStates().get(cId)?.user?.name === 'Carol',
    { label: 'C\'s state at B' })
  h.destroyProvider(c)
  await waitFor([[b.awareness, 'change']], () => !b.awareness.getStates().has(cId),
    { timeout: 5000, label: 'B to see C\'s state removed after C left' })
})

test('awareness: a reconnecting client\'s old state is removed and its new one relayed', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('presence-re')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])
  const aId = a.doc.clientID
  const bEvents = recordChanges(b)
  a.awareness.setLocalState({ user: { name: 'Alice' }, n: 1 })
  await waitFor([[b.awareness, 'change']], () => b.awareness.getStates().get(aId)?.n === 1,
    { label: 'A\'s first state at B' })
  // Kill A's socket; the provider reconnects by itself and re-announces its state.
  const before = bEvents.length
  a.ws.terminate()
  await waitFor([[b.awareness, 'change']], () => bEvents.slice(before).some((e) => e.removed.includes(aId)),
    { timeout: 5000, label: 'A\'s state removed at B after its socket died' })
  const removedClock = b.awareness.meta.get(aId)?.clock
  await waitSynced(a)
  // y-protocols semantics (as in the reference y-websocket server): removing a remote
  // client's state keeps its clock, so the client's next change (clock + 1) wins again.
  a.awareness.setLocalStateField('n', 2)
  const back = () => b.awareness.getStates().get(aId)?.n === 2
  back.describe = () => `A's clock ${a.awareness.meta.get(aId)?.clock}, clock of A's removal as seen by B ` +
    `${removedClock} (A's clock before it disconnected: ${a.awareness.meta.get(aId)?.clock - 1})`
  await waitFor([[b.awareness, 'change']], back,
    { timeout: 5000, label: 'A\'s changed state at B after reconnecting' })
})
