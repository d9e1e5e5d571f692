// A ~5 MB document (text plus many blocks) reaches late joiners intact, from memory and from
// the store.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'

import {
  Y, harness, uniqueRoom, waitSynced, waitFor, makeBlock, workflowJSON, canonicalJSON,
  enableAcks, prng
} from './helpers.mjs'

const sha = (s) => crypto.createHash('sha256').update(s).digest('hex')

test('a 5 MB document reaches a late joiner intact', async (t) => {
  const h = harness(t)
  // Grace 0 so the last joiner (after everyone left) gets the document back from the store.
  const server = await h.server({ args: ['--room-grace-secs', '0'] })
  const room = uniqueRoom('large')
  const writer = h.provider(server, room)
  const acks = enableAcks(writer)
  await waitSynced(writer)

  // ~4 MB of text in 16 updates of 256 KiB, plus ~1 MB spread over 500 blocks.
  const rnd = prng(42)
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n'
  const chunk = (n) => {
    let s = ''
    for (let i = 0; i < n; i++) s += alphabet[rnd.int(alphabet.length)]
    return s
  }
  const text = writer.doc.getText('big')
  for (let i = 0; i < 16; i++) text.insert(text.length, chunk(256 * 1024))
  for (let i = 0; i < 10; i++) {
    writer.doc.transact(() => {
      const blocks = []
      for (let j = 0; j < 50; j++) {
        const id = `blk-${i}-${j}`
        blocks.push(makeBlock({ id, x: j, y: i, label: id, config: { prompt: chunk(2000) } }))
      }
      writer.doc.getArray('blocks').push(blocks)
    })
  }
  const size = Y.encodeStateAsUpdate(writer.doc).length
  t.diagnostic(`document state: ${(size / 1e6).toFixed(2)} MB`)
  assert.ok(size > 5_000_000, `document is only ${size} bytes`)
  const wantText = sha(text.toString())
  const wantBlocks = sha(canonicalJSON(workflowJSON(writer.doc)))

  // Joiner 1: the room is loaded (the writer is still connected).
  const reader = h.provider(server, room)
  await waitSynced(reader, 60000)
  await waitFor([[reader.doc, 'update']], () => reader.doc.getText('big').length === text.length &&
    reader.doc.getArray('blocks').length === 500, { timeout: 60000, label: 'the 5 MB state at the late joiner' })
  assert.equal(sha(reader.doc.getText('big').toString()), wantText)
  assert.equal(sha(canonicalJSON(workflowJSON(reader.doc))), wantBlocks)

  // Everything the writer sent is durable; then everyone leaves and the room unloads.
  await waitFor([[acks.events, 'ack']], () => acks.acks === acks.sent, { timeout: 60000, label: 'save acks for every update' })
  h.destroyProvider(writer)
  h.destroyProvider(reader)

  // Joiner 2: loaded back from the store.
  const again = h.provider(server, room)
  await waitSynced(again, 60000)
  await waitFor([[again.doc, 'update']], () => again.doc.getText('big').length === 16 * 256 * 1024 &&
    again.doc.getArray('blocks').length === 500, { timeout: 60000, label: 'the 5 MB state from the store' })
  assert.equal(sha(again.doc.getText('big').toString()), wantText)
  assert.equal(sha(canonicalJSON(workflowJSON(again.doc))), wantBlocks)
})

test('a single 5 MB update is relayed live and served to a late joiner', async (t) => {
  const h = harness(t)
  const server = await h.server()
  const room = uniqueRoom('large-one')
  const writer = h.provider(server, room)
  const online = h.provider(server, room)
  await Promise.all([waitSynced(writer), waitSynced(online)])
  const rnd = prng(4242)
  let s = ''
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
  for (let i = 0; i < 5 * 1024 * 1024; i++) s += alphabet[rnd.int(alphabet.length)]
  // One transaction: one ~5 MB update message (below the default 16 MiB limit).
  writer.doc.getText('big').insert(0, s)
  const want = sha(s)
  await waitFor([[online.doc, 'update']], () => online.doc.getText('big').length === s.length,
    { timeout: 60000, label: 'the 5 MB update at the online client' })
  assert.equal(sha(online.doc.getText('big').toString()), want)
  const late = h.provider(server, room)
  await waitSynced(late, 60000)
  await waitFor([[late.doc, 'update']], () => late.doc.getText('big').length === s.length,
    { timeout: 60000, label: 'the 5 MB state at the late joiner' })
  assert.equal(sha(late.doc.getText('big').toString()), want)
})
