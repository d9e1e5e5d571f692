// Offline persistence (IndexedDB through fake-indexeddb, the browser's API in memory): the
// local copy, the `local` save status, and clearing the copy when the workflow is gone.
import 'fake-indexeddb/auto'
import crypto from 'node:crypto'
import * as Y from 'yjs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ResonantClient, Room } from '../src/index.js'
import { LocalCopy, localName } from '../src/offline.js'
import { api, client, mintToken, newWorkflow, Proxy, startServer, until, untilRoom, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

function open(url: string, name: string, workflowId: string, extra = {}): { room: Room; c: ResonantClient } {
  const c = client(url, name, extra)
  clients.push(c)
  return { room: c.enterRoom(workflowId).room, c }
}

const untilLoaded = (room: Room) => until((cb) => room.on('loaded', cb), () => room.loaded, 'loaded')
const ids = (room: Room) => room.workflow.blocks().map((b) => b.id).sort()

async function databases(): Promise<string[]> {
  return (await indexedDB.databases()).map((d) => d.name!).filter((n) => n.startsWith('resonant:'))
}

describe('offline persistence', () => {
  it('a reload while offline shows the stored copy as `local`; on reconnect it is saving until acknowledged, then saved', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const first = open(url, 'ada', wf)
    await first.room.whenSynced()
    expect(first.room.persisted).toBe(true)
    const online = first.room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    await first.room.whenSaved()

    proxy.refuse = true
    proxy.cut()
    await untilRoom(first.room, 'status', () => first.room.status === 'reconnecting', 'the cut to be noticed')
    const offline = first.room.workflow.addBlock({ type: 'output', position: { x: 200, y: 0 } })
    // Not 'offline': the edit is in IndexedDB, it survives closing the tab.
    expect(first.room.saveStatus).toBe('local')
    // Closing the tab: nothing waits for the server.
    first.c.destroy()

    // The reload, still cut off: the editor opens from the local copy.
    const second = open(url, 'ada', wf)
    await untilLoaded(second.room)
    expect(second.room.synced).toBe(false)
    expect(ids(second.room)).toEqual([online, offline].sort())
    expect(second.room.saveStatus).toBe('local')
    let settled = false
    void second.room.whenSaved().then(() => (settled = true))

    // Back online with acknowledgements held: the handshake carries the offline edit, and the
    // status says so until the server acknowledges it.
    proxy.mode = 'hold-acks'
    proxy.refuse = false
    await second.room.whenSynced()
    expect(second.room.saveStatus).toBe('saving')
    expect(settled).toBe(false)
    proxy.release()
    await second.room.whenSaved()
    expect(second.room.saveStatus).toBe('saved')

    const bob = open(server.url, 'bob', wf)
    await bob.room.whenSynced()
    expect(ids(bob.room)).toEqual([online, offline].sort())

    // Saved now: a later offline reload opens with nothing to send, not `local`.
    second.c.destroy()
    proxy.refuse = true
    proxy.cut()
    const third = open(url, 'ada', wf)
    await untilLoaded(third.room)
    expect(ids(third.room)).toEqual([online, offline].sort())
    expect(third.room.saveStatus).not.toBe('local')
    proxy.close()
  })

  it('one copy per server, user and workflow; a workflow never synced does not open from nothing', async () => {
    const wf = await newWorkflow(server)
    const ada = open(server.url, 'ada', wf)
    await ada.room.whenSynced()
    ada.room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    await ada.room.whenSaved()
    const names = await databases()
    expect(names).toContain(localName(server.url, 'ada', wf))
    expect(names).not.toContain(localName(server.url, 'bob', wf))

    // Bob on the same browser, offline: Ada's copy is not his, so nothing is loaded.
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    proxy.refuse = true
    const bob = open(url, 'bob', wf)
    await until((cb) => bob.room.on('status', cb), () => bob.room.status === 'reconnecting', 'bob to fail to connect')
    expect(bob.room.loaded).toBe(false)
    expect(bob.room.workflow.blocks()).toEqual([])
    proxy.close()
  })

  it('a deleted workflow (4410) clears its local copy', async () => {
    const wf = await newWorkflow(server)
    const { room } = open(server.url, 'ada', wf)
    await room.whenSynced()
    room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    await room.whenSaved()
    expect(await databases()).toContain(localName(server.url, 'ada', wf))

    await api(server, 'DELETE', `/api/v1/workflows/${wf}`)
    await untilRoom(room, 'error', () => room.error?.code === 'deleted', 'the 4410 close')
    await room.localCleared
    expect(await databases()).not.toContain(localName(server.url, 'ada', wf))
  })

  it('access lost (4403): the stale copy opens offline, then is cleared when the server refuses', async () => {
    const secret = crypto.randomBytes(32).toString('hex')
    const authed = await startServer(['--jwt-secret', secret])
    try {
      const wf = await newWorkflow(authed, mintToken(secret, 'owner', 600))
      // A copy eve kept from when she had access.
      const name = localName(authed.url, 'eve', wf)
      const doc = new Y.Doc()
      const copy = new LocalCopy(name, doc)
      expect(await copy.load()).toEqual({ synced: false, unsaved: false })
      copy.markSynced()
      doc.getArray('blocks').push([new Y.Map([['id', 'old']])])
      copy.destroy()

      const { room } = open(authed.url, 'eve', wf, { getToken: () => mintToken(secret, 'eve', 600) })
      await untilLoaded(room)
      expect(room.workflow.blocks().map((b) => b.id)).toEqual(['old'])
      await untilRoom(room, 'error', () => room.error?.code === 'forbidden', 'the 4403 close')
      await room.localCleared
      expect(await databases()).not.toContain(name)
    } finally {
      await authed.stop()
    }
  })

  it('clearLocalData() (sign-out) deletes only this user\'s copies on this server', async () => {
    const [w1, w2] = [await newWorkflow(server), await newWorkflow(server)]
    const ada = open(server.url, 'ada', w1).c
    const ada2 = ada.enterRoom(w2).room
    const dan = open(server.url, 'dan', w1)
    await Promise.all([ada.room(w1)!.whenSynced(), ada2.whenSynced(), dan.room.whenSynced()])
    await until((cb) => ada2.on('loaded', cb), () => ada2.persisted && dan.room.persisted, 'the copies to open')
    // Earlier tests left Ada's copies of other workflows: those go too.
    expect(await ada.clearLocalData()).toBeGreaterThanOrEqual(2)
    const names = await databases()
    expect(names.filter((n) => n.startsWith(`resonant:${server.url}:ada:`))).toEqual([])
    expect(names).toContain(localName(server.url, 'dan', w1))
  })

  it('`offline: false` keeps nothing and says `offline`', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const { room } = open(url, 'cy', wf, { offline: false })
    await room.whenSynced()
    expect(room.persisted).toBe(false)
    proxy.refuse = true
    proxy.cut()
    await untilRoom(room, 'status', () => room.status === 'reconnecting', 'the cut to be noticed')
    room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    expect(room.saveStatus).toBe('offline')
    expect(await databases()).not.toContain(localName(url, 'cy', wf))
    proxy.close()
  })
})
