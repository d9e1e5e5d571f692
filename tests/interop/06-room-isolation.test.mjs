// 100 rooms open at once on one server: edits in room i never show up in room j, neither
// live nor in what the store gives back.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'

import {
  harness, waitSynced, waitFor, makeBlock, blockIds, withTimeout, enableAcks, TEST_DATABASE_URL
} from './helpers.mjs'

async function readAll (h, server, names, phase) {
  // 20 rooms at a time: each reader must see exactly its own room's two blocks.
  for (let start = 0; start < names.length; start += 20) {
    const batch = names.slice(start, start + 20).map((room, k) => ({ room, i: start + k }))
    const readers = batch.map(({ room }) => h.provider(server, room))
    await Promise.all(readers.map(async (r, k) => {
      const { i } = batch[k]
      await waitSynced(r, 30000)
      await waitFor([[r.doc, 'update']], () => blockIds(r.doc).length >= 2,
        { timeout: 15000, label: `${phase} reader of ${names[i]} to get its blocks` })
      assert.deepEqual(blockIds(r.doc), [`block-of-${i}`, `second-of-${i}`], `${phase}: room ${names[i]}`)
      assert.equal(r.doc.getMap('meta').get('room'), names[i], `${phase}: room ${names[i]}`)
    }))
    for (const r of readers) h.destroyProvider(r)
  }
}

async function isolationTest (t, databaseUrl) {
  const h = harness(t)
  // Grace 0: once the writers leave, the second round of readers loads every room from the store.
  const server = await h.server({ databaseUrl, args: ['--room-grace-secs', '0'] })
  const base = `iso-${Date.now().toString(36)}-${crypto.randomBytes(3).toString('hex')}`
  // Names chosen to trip up sloppy keying: numeric prefixes of each other (r-1, r-10,
  // r-940), names differing only in case, and the other allowed punctuation.
  const names = []
  for (let i = 0; i < 94; i++) names.push(`${base}-r-${i}`)
  names.push(`${base}-r-940`, `${base}-CASE`, `${base}-case`, `${base}-Case`, `${base}.dot_under`, `${base}_dot.under`)
  assert.equal(new Set(names).size, 100)

  // One writer per room, all connected at the same time (100 connections).
  const writers = names.map((room) => h.provider(server, room))
  const acks = writers.map((p) => enableAcks(p))
  await withTimeout(Promise.all(writers.map((p) => waitSynced(p, 30000))), 40000, 'all writers to sync')
  writers.forEach((p, i) => {
    p.doc.transact(() => {
      p.doc.getArray('blocks').push([makeBlock({ id: `block-of-${i}`, label: names[i] })])
      p.doc.getMap('meta').set('room', names[i])
    })
  })
  writers.forEach((p, i) => p.doc.getArray('blocks').push([makeBlock({ id: `second-of-${i}` })]))

  // Live: readers join the loaded rooms.
  await readAll(h, server, names, 'live')

  // Every writer's edits are durable; by now any cross-room leak would have reached them.
  await withTimeout(Promise.all(acks.map((a, i) => waitFor([[a.events, 'ack']], () => a.acks === a.sent && a.sent >= 3,
    { timeout: 15000, label: `acks in ${names[i]}` }))), 20000, 'all save acks')
  writers.forEach((p, i) => {
    assert.deepEqual(blockIds(p.doc), [`block-of-${i}`, `second-of-${i}`], `writer of ${names[i]}`)
    assert.equal(p.doc.getMap('meta').get('room'), names[i])
  })
  for (const p of writers) h.destroyProvider(p)

  // From the store: the rooms unload once empty, and load back with only their own data.
  await readAll(h, server, names, 'reloaded')
}

test('100 rooms stay isolated (SQLite)', async (t) => {
  await isolationTest(t, undefined)
})

test('100 rooms stay isolated (Postgres)', {
  skip: TEST_DATABASE_URL ? false : 'TEST_DATABASE_URL is not set: Postgres variant skipped'
}, async (t) => {
  await isolationTest(t, TEST_DATABASE_URL)
})
