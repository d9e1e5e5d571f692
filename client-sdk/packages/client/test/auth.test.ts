import { afterAll, beforeAll, expect, it } from 'vitest'
import crypto from 'node:crypto'
import type { ResonantClient } from '../src/index.js'
import { api, client, mintToken, newWorkflow, startServer, untilDoc, untilRoom, type Server } from './helpers.js'

const secret = crypto.randomBytes(32).toString('hex')
let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer(['--jwt-secret', secret])
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

it('an expired token is refreshed on 4401 and the room reconnects', async () => {
  const wf = await newWorkflow(server, mintToken(secret, 'ada', 600))
  const reasons: string[] = []
  const c = client(server.url, 'ada', {
    // The first token has already expired: the server closes with 4401 and a fresh one is asked for.
    getToken: (reason: 'connect' | 'expired') => {
      reasons.push(reason)
      return mintToken(secret, 'ada', reasons.length === 1 ? -60 : 600)
    },
  })
  clients.push(c)
  const { room } = c.enterRoom(wf)
  await room.whenSynced()
  expect(reasons).toEqual(['connect', 'expired'])
  expect(room.error).toBeNull()
  room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
  await untilRoom(room, 'save', () => room.saveStatus === 'saved', 'the edit to be saved')

  const other = client(server.url, 'ada2', { getToken: () => mintToken(secret, 'ada', 600) })
  clients.push(other)
  const o = other.enterRoom(wf).room
  await o.whenSynced()
  await untilDoc(o, () => o.workflow.blocks().length === 1, 'the block on a second socket')
})

it('4403 stops the room and reports it, without asking for tokens again', async () => {
  const wf = await newWorkflow(server, mintToken(secret, 'owner', 600))
  let asked = 0
  const c = client(server.url, 'eve', {
    getToken: () => {
      asked++
      return mintToken(secret, 'eve', 600)
    },
  })
  clients.push(c)
  const { room } = c.enterRoom(wf)
  await untilRoom(room, 'error', () => room.error !== null, 'a refusal')
  expect(room.error).toMatchObject({ code: 'forbidden', closeCode: 4403, fatal: true })
  await expect(room.whenSynced()).rejects.toBe(room.error)
  expect(room.status).toBe('disconnected')
  expect(asked).toBe(1)
})

it('a viewer is saved after connecting, and its refused edit is never reported as saved', async () => {
  const owner = mintToken(secret, 'olga', 600)
  const wf = await newWorkflow(server, owner)
  const vic = mintToken(secret, 'vic', 600)
  const me = await api(server, 'GET', '/api/v1/me', undefined, vic)
  const wsId = (await api(server, 'GET', '/api/v1/workspaces', undefined, owner)).items[0].id
  // Membership is by invitation: the owner invites, the invited user accepts.
  const invited = await api(server, 'POST', `/api/v1/workspaces/${wsId}/members`, { userId: me.id, role: 'viewer' }, owner)
  const link = new URL(invited.acceptUrl).searchParams.get('token')
  await api(server, 'POST', '/api/v1/invitations/accept', { token: link }, vic)

  const c = client(server.url, 'vic', { getToken: () => mintToken(secret, 'vic', 600) })
  clients.push(c)
  const { room } = c.enterRoom(wf)
  await room.whenSynced()
  // The handshake's empty step 2 is acknowledged: nothing is pending.
  await untilRoom(room, 'save', () => room.saveStatus === 'saved', 'a viewer to be saved')
  // The server says so at opt-in, before any edit is refused.
  await untilRoom(room, 'status', () => room.readOnly, 'the read-only notice')
  room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
  expect(room.saveStatus).toBe('unknown')
  await untilRoom(room, 'save', () => room.unacknowledged === 0, 'the refusal')
  expect(room.saveStatus).toBe('unknown')
  expect(room.unacknowledged).toBe(0)
})
