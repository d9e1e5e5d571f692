// Save acknowledgements ([8, 1]): exactly one per document message from a client that opted
// in, and never any extension message (types 5 and 8) for a client that did not.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  harness, uniqueRoom, waitSynced, waitFor, makeBlock, blockIds, enableAcks, withTimeout,
  MSG_SYNC, SYNC_UPDATE, MSG_AWARENESS, MSG_STATELESS, MSG_SYNC_STATUS, CLOSE
} from './helpers.mjs'

/**
 * After `count()` reached `expected`, checks that no further ack is on its way: one more
 * document message is sent, its ack awaited, and then a query-awareness round trip (the
 * server answers it in order) shows the count stayed at expected + 1.
 */
async function assertNoExtraAcks (label, { count, sendOne, ackSource, roundTrip, expected }) {
  sendOne()
  await waitFor(ackSource, () => count() >= expected + 1, { label: `${label}: ack for the barrier update` })
  await roundTrip()
  assert.equal(count(), expected + 1, `${label}: acks after the barrier (one per document message)`)
}

test('an opted-in stock provider gets exactly one [8,1] per update it sent', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('acks')
  const p = h.provider(server, room)
  const acks = enableAcks(p)
  // A second, stock provider in the room: its edits must not be acked to p.
  const other = h.provider(server, room)
  await Promise.all([waitSynced(p), waitSynced(other)])
  other.doc.getArray('blocks').push([makeBlock({ id: 'from-other' })])
  await waitFor([[p.doc, 'update']], () => blockIds(p.doc).includes('from-other'), { label: 'other\'s edit at p' })

  const blocks = p.doc.getArray('blocks')
  for (let i = 0; i < 25; i++) {
    p.doc.transact(() => blocks.push([makeBlock({ id: `acked-${i}`, x: i })]))
    // Awareness traffic in between: never acknowledged.
    p.awareness.setLocalStateField('cursor', { i })
    if (i % 5 === 0) blocks.get(0).get('data').set('label', `renamed ${i}`)
  }
  const expected = acks.sent
  assert.equal(expected, 1 + 25 + 5, 'step 2 + 25 inserts + 5 renames')
  await waitFor([[acks.events, 'ack']], () => acks.acks >= expected, { label: `${expected} acks` })
  assert.equal(acks.acks, expected)
  assert.deepEqual(acks.unexpected, [])

  let roundTrips = 0
  await assertNoExtraAcks('provider', {
    count: () => acks.acks,
    expected,
    sendOne: () => blocks.push([makeBlock({ id: 'barrier' })]),
    ackSource: [[acks.events, 'ack']],
    roundTrip: async () => {
      // other's edit is fanned out to p after everything p sent before it was handled.
      other.doc.getMap('meta').set('roundTrip', ++roundTrips)
      await waitFor([[p.doc, 'update']], () => p.doc.getMap('meta').get('roundTrip') === roundTrips, { label: 'round trip' })
    }
  })
  assert.equal(acks.sent, expected + 1)
})

test('a raw opted-in client gets one ack per update and step 2, duplicates included', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('acks-raw')
  const raw = h.raw(server.roomUrl(room), { speak: true, optIn: true })
  await raw.opened
  await waitFor([[raw, 'synced']], () => raw.synced, { label: 'raw client sync' })
  // The raw client answered the server's step 1 with a step 2 (its doc was empty): 1 message.
  assert.equal(raw.docMessagesSent, 1)

  const blocks = raw.doc.getArray('blocks')
  const updates = []
  raw.doc.on('update', (u) => updates.push(u))
  for (let i = 0; i < 10; i++) blocks.push([makeBlock({ id: `raw-${i}` })])
  raw.sendAwareness({ user: { name: 'raw' } })
  raw.sendQueryAwareness()
  // Re-sending updates the server already has: still one ack each ("per update it sent").
  raw.sendUpdate(updates[0])
  raw.sendUpdate(updates[9])
  const expected = raw.docMessagesSent
  assert.equal(expected, 1 + 10 + 2)
  await waitFor([[raw, 'frame']], () => raw.acks >= expected, { label: `${expected} acks for the raw client` })
  assert.equal(raw.acks, expected)
  await assertNoExtraAcks('raw client', {
    count: () => raw.acks,
    expected,
    sendOne: () => blocks.push([makeBlock({ id: 'raw-barrier' })]),
    ackSource: [[raw, 'frame']],
    roundTrip: async () => {
      const n = raw.receivedTypes.filter((x) => x === MSG_AWARENESS).length
      raw.sendQueryAwareness()
      await waitFor([[raw, 'frame']], () => raw.receivedTypes.filter((x) => x === MSG_AWARENESS).length > n,
        { label: 'query-awareness answer' })
    }
  })
  // Alone in the room, the raw client never gets its own updates echoed back.
  assert.equal(raw.received.filter((f) => f[0] === MSG_SYNC && f[1] === SYNC_UPDATE).length, 0, 'own updates echoed')
  // Every ack is exactly the two bytes [8, 1].
  for (const frame of raw.received.filter((f) => f[0] === MSG_SYNC_STATUS)) {
    assert.deepEqual([...frame], [MSG_SYNC_STATUS, 1])
  }
  // The acknowledged edits are really there for a fresh client.
  const check = h.provider(server, room)
  await waitSynced(check)
  await waitFor([[check.doc, 'update']], () => check.doc.getArray('blocks').length === 11, { label: 'raw edits at a fresh client' })
})

test('clients that never opt in never receive type 5 or type 8 messages', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('no-ext')
  // An opted-in provider produces acks (and errors would be stateless messages) in the same
  // room, so there is something to leak.
  const optedIn = h.provider(server, room)
  const optedAcks = enableAcks(optedIn)
  // A stock provider whose handlers for 5 and 8 only record.
  const stock = h.provider(server, room)
  const stockExtensions = []
  stock.messageHandlers[MSG_STATELESS] = (_e, _d, _p, _s, type) => stockExtensions.push(type)
  stock.messageHandlers[MSG_SYNC_STATUS] = (_e, _d, _p, _s, type) => stockExtensions.push(type)
  // A raw client speaking the protocol by hand, never sending 5 or 8.
  const raw = h.raw(server.roomUrl(room), { speak: true })
  await Promise.all([waitSynced(optedIn), waitSynced(stock), raw.opened])
  await waitFor([[raw, 'synced']], () => raw.synced, { label: 'raw client sync' })

  for (let i = 0; i < 10; i++) {
    optedIn.doc.getArray('blocks').push([makeBlock({ id: `opted-${i}` })])
    stock.doc.getArray('blocks').push([makeBlock({ id: `stock-${i}` })])
    raw.doc.getArray('blocks').push([makeBlock({ id: `raw-${i}` })])
  }
  raw.sendAwareness({ user: { name: 'raw' } })
  stock.awareness.setLocalState({ user: { name: 'stock' } })
  raw.sendQueryAwareness()
  await waitFor([[optedIn.doc, 'update'], [stock.doc, 'update'], [raw.doc, 'update']], () =>
    [optedIn.doc, stock.doc, raw.doc].every((d) => d.getArray('blocks').length === 30),
  { label: 'all 30 edits everywhere' })
  await waitFor([[optedAcks.events, 'ack']], () => optedAcks.acks === optedAcks.sent, { label: 'the opted-in client\'s acks' })
  await waitFor([[raw, 'frame']], () => raw.receivedTypes.includes(MSG_AWARENESS), { label: 'awareness at raw' })

  // Finally the raw client sends an invalid update: it is closed with 1007, and an error
  // message (type 5) is only for clients that opted in, so none may precede the close.
  raw.ws.send(new Uint8Array([MSG_SYNC, SYNC_UPDATE, 3, 0xff, 0xff, 0x7f]))
  const { code } = await withTimeout(raw.closed, 10000, 'the raw client to be closed')
  assert.equal(code, CLOSE.INVALID_PAYLOAD)

  const rawExtensions = raw.receivedTypes.filter((x) => x === MSG_STATELESS || x === MSG_SYNC_STATUS)
  assert.deepEqual(rawExtensions, [], `raw stock client received extension messages (types ${raw.receivedTypes.join(',')})`)
  assert.deepEqual(stockExtensions, [], 'stock provider received extension messages')
  assert.equal(raw.textFrames, 0)
  assert.ok(raw.receivedTypes.every((x) => x === MSG_SYNC || x === MSG_AWARENESS),
    `unexpected message types at the raw client: ${[...new Set(raw.receivedTypes)]}`)
  // Sanity: the same server did send acks to the client that asked.
  assert.ok(optedAcks.acks >= 11)
})
