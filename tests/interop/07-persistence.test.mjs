// Durability across restarts: a clean shutdown (SIGTERM) keeps everything the server had
// applied, and a crash (SIGKILL right after the last save ack) keeps everything acknowledged.
// Run for SQLite, and for Postgres when TEST_DATABASE_URL is set.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  harness, uniqueRoom, waitSynced, waitFor, waitContent, makeBlock, makeConnection,
  workflowJSON, blockIds, enableAcks, TEST_DATABASE_URL, CLOSE
} from './helpers.mjs'

/** Separate transactions: each one is its own update message (and its own save ack). */
function editMany (doc, prefix, n) {
  const blocks = doc.getArray('blocks')
  for (let i = 0; i < n; i++) {
    blocks.push([makeBlock({ id: `${prefix}-${i}`, x: i, y: i * 2, label: `${prefix} ${i}`, config: { i } })])
    if (i % 5 === 4) doc.getArray('connections').push([makeConnection(`${prefix}-${i - 1}`, `${prefix}-${i}`)])
    if (i % 7 === 6) blocks.get(blocks.length - 2).get('data').set('label', `${prefix} relabelled ${i}`)
  }
  doc.getMap('meta').set(`${prefix}-count`, n)
}

async function cleanRestart (t, databaseUrl) {
  const h = harness(t)
  const dataDir = await h.tempDir()
  const room = uniqueRoom('restart')
  const server = await h.server({ dataDir, databaseUrl })
  const w = h.provider(server, room)
  const observer = h.provider(server, room)
  await Promise.all([waitSynced(w), waitSynced(observer)])
  const closeCodes = []
  w.on('connection-close', (event) => closeCodes.push(event?.code))

  editMany(w.doc, 'clean', 30)
  w.doc.getArray('blocks').delete(3, 2)
  const expected = workflowJSON(w.doc)
  // No save acks here: once the server has fanned every edit out to the observer it has
  // applied them, and a clean shutdown must commit everything it applied.
  await waitContent([observer.doc], workflowJSON, expected, { label: 'every edit fanned out before SIGTERM' })
  const exit = await server.stop()
  assert.deepEqual(exit, { code: 0, signal: null }, `clean shutdown exit status\n${server.stderr()}`)
  await waitFor([[w, 'connection-close']], () => closeCodes.length > 0, { label: 'the client to see its socket closed' })
  assert.equal(closeCodes[0], CLOSE.SERVICE_RESTART, 'close code on shutdown')
  h.destroyProvider(w)
  h.destroyProvider(observer)

  const again = await h.server({ dataDir, databaseUrl })
  const fresh = h.provider(again, room)
  await waitSynced(fresh)
  await waitContent([fresh.doc], workflowJSON, expected, { label: 'the state after a clean restart' })
  assert.equal(blockIds(fresh.doc).length, 28)
}

async function crashRestart (t, databaseUrl, args = []) {
  const h = harness(t)
  const dataDir = await h.tempDir()
  const room = uniqueRoom('crash')
  const server = await h.server({ dataDir, databaseUrl, args })
  const w = h.provider(server, room)
  const acks = enableAcks(w)
  await waitSynced(w)
  // The step 2 answer to the server's step 1 goes out before the provider reports synced.
  assert.ok(acks.sent >= 1, 'the provider sent its sync step 2')

  const N = 60
  let ackedState = null
  let killedAt = null
  acks.onAck = (n) => {
    // SIGKILL in the same tick the last ack arrives: nothing after it may be relied on.
    if (n === acks.sent && ackedState === null && killedAt === null && acks.sent >= N) {
      server.child.kill('SIGKILL')
      killedAt = n
      ackedState = workflowJSON(w.doc)
    }
  }
  editMany(w.doc, 'crash', N)
  w.doc.getArray('blocks').delete(10, 5)
  assert.ok(acks.sent >= N + 2, `only ${acks.sent} document messages sent`)
  const exit = await server.exited
  assert.equal(exit.signal, 'SIGKILL', 'server should have been killed by the test (it died by itself?)')
  assert.equal(killedAt, acks.sent, 'killed after the ack for the last edit')
  assert.deepEqual(acks.unexpected, [])
  w.shouldConnect = false
  h.destroyProvider(w)

  const again = await h.server({ dataDir, databaseUrl, args })
  const fresh = h.provider(again, room)
  await waitSynced(fresh)
  await waitContent([fresh.doc], workflowJSON, ackedState, { label: 'every acknowledged edit after kill -9' })
  assert.equal(fresh.doc.getArray('blocks').length, N - 5)
  assert.equal(fresh.doc.getMap('meta').get('crash-count'), N)

  // The restarted server keeps working on that room, and a second crash loses nothing acked.
  const w2 = h.provider(again, room)
  const acks2 = enableAcks(w2)
  await waitSynced(w2)
  editMany(w2.doc, 'second', 10)
  await waitFor([[acks2.events, 'ack']], () => acks2.acks === acks2.sent, { label: 'acks after the first restart' })
  const expected2 = workflowJSON(w2.doc)
  await again.kill9()
  h.destroyProvider(w2)
  h.destroyProvider(fresh)
  const third = await h.server({ dataDir, databaseUrl, args })
  const fresh2 = h.provider(third, room)
  await waitSynced(fresh2)
  await waitContent([fresh2.doc], workflowJSON, expected2, { label: 'every acknowledged edit after the second kill -9' })
}

const pgSkip = TEST_DATABASE_URL ? false : 'TEST_DATABASE_URL is not set: Postgres variant skipped'

test('state survives a clean restart (SQLite)', async (t) => cleanRestart(t, undefined))
test('acknowledged edits survive kill -9 (SQLite)', async (t) => crashRestart(t, undefined))
// Compaction every 7 updates: snapshots replace the log while edits keep coming.
test('acknowledged edits survive kill -9 with frequent compaction (SQLite)', async (t) =>
  crashRestart(t, undefined, ['--compact-after-updates', '7']))
test('state survives a clean restart (Postgres)', { skip: pgSkip }, async (t) => cleanRestart(t, TEST_DATABASE_URL))
test('acknowledged edits survive kill -9 (Postgres)', { skip: pgSkip }, async (t) => crashRestart(t, TEST_DATABASE_URL))
test('acknowledged edits survive kill -9 with frequent compaction (Postgres)', { skip: pgSkip }, async (t) =>
  crashRestart(t, TEST_DATABASE_URL, ['--compact-after-updates', '7']))
