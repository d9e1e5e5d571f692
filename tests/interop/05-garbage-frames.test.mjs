// Garbage from a raw socket gets the documented close code and harms nobody else: two stock
// clients in the same room keep syncing, and the server process stays up.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import {
  Y, harness, uniqueRoom, waitSynced, waitFor, makeBlock, blockIds, prng, encoding,
  MSG_SYNC, SYNC_UPDATE, CLOSE, withTimeout
} from './helpers.mjs'

const MAX_MESSAGE_BYTES = 64 * 1024

function syncUpdateFrame (payload) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_SYNC)
  encoding.writeVarUint(enc, SYNC_UPDATE)
  encoding.writeVarUint8Array(enc, payload)
  return encoding.toUint8Array(enc)
}

test('garbage frames get the documented close codes; the room and the server survive', async (t) => {
  const h = harness(t)
  const server = await h.server({ args: ['--max-message-bytes', String(MAX_MESSAGE_BYTES)] })
  const room = uniqueRoom('garbage')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])
  a.doc.getArray('blocks').push([makeBlock({ id: 'before' })])
  await waitFor([[b.doc, 'update']], () => blockIds(b.doc).includes('before'), { label: 'edit before the garbage' })

  const rnd = prng(7)
  // Random bytes as an update payload; they must not happen to be a valid update (checked
  // with yjs itself, so the expected 1007 is sound).
  const randomPayload = rnd.bytes(2048)
  randomPayload[0] = 0xff // a huge varuint struct count: can never be a valid update
  randomPayload[1] = 0xff
  randomPayload[2] = 0x7f
  assert.throws(() => Y.applyUpdate(new Y.Doc(), randomPayload))
  const fullyRandom = rnd.bytes(4096)
  fullyRandom[0] = 0x49 // message type 73: not a y-websocket or extension message

  const cases = [
    { name: 'random bytes (unknown message type)', frame: fullyRandom, code: CLOSE.INVALID_PAYLOAD },
    { name: 'random bytes as a sync update', frame: syncUpdateFrame(randomPayload), code: CLOSE.INVALID_PAYLOAD },
    { name: 'truncated sync update [0,2,50,1,2]', frame: new Uint8Array([0, 2, 50, 1, 2]), code: CLOSE.INVALID_PAYLOAD },
    { name: 'truncated sync step 1 [0,0,5]', frame: new Uint8Array([0, 0, 5]), code: CLOSE.INVALID_PAYLOAD },
    { name: 'unknown sync sub-type [0,9,0]', frame: new Uint8Array([0, 9, 0]), code: CLOSE.INVALID_PAYLOAD },
    { name: 'malformed awareness [1,3,255,255,255]', frame: new Uint8Array([1, 3, 255, 255, 255]), code: CLOSE.INVALID_PAYLOAD },
    { name: 'empty binary frame', frame: new Uint8Array(0), code: CLOSE.INVALID_PAYLOAD },
    { name: 'text frame', frame: 'hello, this is text', code: CLOSE.UNSUPPORTED_DATA },
    { name: `oversized frame (${4 * MAX_MESSAGE_BYTES} bytes > --max-message-bytes ${MAX_MESSAGE_BYTES})`, frame: new Uint8Array(4 * MAX_MESSAGE_BYTES), code: CLOSE.MESSAGE_TOO_BIG }
  ]

  for (const c of cases) {
    const raw = h.raw(server.roomUrl(room))
    await raw.opened
    // Wait for the server's greeting (sync step 1) so the garbage lands in a joined session.
    await waitFor([[raw, 'frame']], () => raw.received.length > 0, { label: `greeting for ${c.name}` })
    raw.ws.send(c.frame, { binary: typeof c.frame !== 'string' })
    const { code } = await withTimeout(raw.closed, 10000, `the server to close the socket after: ${c.name}`)
    assert.equal(code, c.code, `${c.name}: close code`)
    assert.ok(server.alive, `server died after: ${c.name}\n${server.stderr()}`)
  }

  // A bad room name is refused with 1008 (before any sync).
  for (const bad of ['bad%20name', 'x'.repeat(129), 'semi%3Bcolon']) {
    const raw = h.raw(`${server.wsUrl}/${bad}`)
    const { code } = await withTimeout(raw.closed, 10000, `the server to refuse room name ${bad.slice(0, 20)}`)
    assert.equal(code, CLOSE.POLICY_VIOLATION, `room name ${JSON.stringify(bad.slice(0, 20))}`)
  }
  // Sanity: a 128-character name is fine.
  const long = h.raw(`${server.wsUrl}/${'y'.repeat(128)}`)
  await long.opened
  await waitFor([[long, 'frame']], () => long.received.length > 0, { label: 'greeting in a 128-char room' })
  assert.equal(long.isOpen, true)

  // The two stock clients were never disturbed and still sync both ways.
  assert.equal(a.wsconnected, true, 'client A was disconnected by someone else\'s garbage')
  assert.equal(b.wsconnected, true, 'client B was disconnected by someone else\'s garbage')
  a.doc.getArray('blocks').push([makeBlock({ id: 'after-a' })])
  b.doc.getArray('blocks').push([makeBlock({ id: 'after-b' })])
  await waitFor([[a.doc, 'update'], [b.doc, 'update']], () =>
    [a, b].every((p) => ['before', 'after-a', 'after-b'].every((id) => blockIds(p.doc).includes(id))),
  { label: 'A and B to sync after the garbage' })
  assert.deepEqual(blockIds(a.doc), blockIds(b.doc))
  // None of the garbage made it into the document: a fresh joiner sees exactly 3 blocks.
  const c = h.provider(server, room)
  await waitSynced(c)
  await waitFor([[c.doc, 'update']], () => c.doc.getArray('blocks').length === 3, { label: 'fresh joiner state' })
  assert.deepEqual(blockIds(c.doc).sort(), ['after-a', 'after-b', 'before'])

  // Still alive, and still answering HTTP.
  assert.ok(server.alive)
  const res = await fetch(`${server.httpUrl}/healthz`)
  assert.equal(res.status, 200)
})

test('a full room refuses the next connection with 1013 and keeps serving the others', async (t) => {
  const h = harness(t)
  const server = await h.server({ args: ['--max-connections-per-room', '2'] })
  const room = uniqueRoom('full')
  const a = h.provider(server, room)
  const b = h.provider(server, room)
  await Promise.all([waitSynced(a), waitSynced(b)])
  const third = h.raw(server.roomUrl(room))
  const { code } = await withTimeout(third.closed, 10000, 'the third connection to be refused')
  assert.equal(code, CLOSE.TRY_AGAIN_LATER)
  // Another room is not affected by this one being full.
  const elsewhere = h.provider(server, uniqueRoom('not-full'))
  await waitSynced(elsewhere)
  a.doc.getArray('blocks').push([makeBlock({ id: 'still-works' })])
  await waitFor([[b.doc, 'update']], () => blockIds(b.doc).includes('still-works'), { label: 'A and B still syncing' })
})
