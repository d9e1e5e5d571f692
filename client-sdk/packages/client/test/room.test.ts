import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ResonantClient, Room } from '../src/index.js'
import { client, newWorkflow, Proxy, startServer, untilDoc, untilRoom, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

function open(url: string, name: string, workflowId: string, extra = {}): Room {
  const c = client(url, name, extra)
  clients.push(c)
  return c.enterRoom(workflowId).room
}

describe('workflow helpers', () => {
  it('sync blocks and connections between two editors, one transaction per action', async () => {
    const wf = await newWorkflow(server)
    const a = open(server.url, 'ada', wf)
    const b = open(server.url, 'bob', wf)
    await Promise.all([a.whenSynced(), b.whenSynced()])

    let transactions = 0
    a.doc.on('update', () => transactions++)
    const input = a.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    const gen = a.workflow.addBlock({ id: 'gen', type: 'ai', position: { x: 200, y: 0 } })
    const out = a.workflow.addBlock({ type: 'output', position: { x: 400, y: 0 } })
    expect(a.workflow.connect({ source: input, target: gen })).toBeTruthy()
    expect(a.workflow.connect({ source: gen, target: out })).toBeTruthy()
    expect(a.workflow.connect({ source: gen, target: out }), 'a duplicate is refused').toBeNull()
    expect(a.workflow.connect({ source: gen, target: gen }), 'a self-loop is refused').toBeNull()
    a.workflow.updateBlock(gen, { config: { temperature: 0.5 }, data: { label: 'Write' } })
    a.workflow.moveBlock(gen, { x: 210, y: 15 })
    expect(transactions).toBe(7)
    // The AI block starts from the schema's example, so it is runnable as added.
    expect(typeof a.workflow.block(gen)!.config.userPromptTemplate).toBe('string')

    await untilDoc(b, () => b.workflow.connections().length === 2 && b.workflow.block(gen)?.position.x === 210, 'b to see a’s graph')
    expect(b.workflow.blocks().map((x) => x.id)).toEqual([input, gen, out])
    expect(b.workflow.block(gen)).toMatchObject({ type: 'ai', position: { x: 210, y: 15 }, data: { label: 'Write' }, config: { temperature: 0.5 } })

    // Stable objects: an edit to one block leaves the others' objects untouched.
    const before = b.workflow.blocks()
    a.workflow.updateBlock(out, { config: { template: '{{ upstream }}' } })
    await untilDoc(b, () => b.workflow.block(out)?.config.template === '{{ upstream }}', 'b to see the output template')
    const after = b.workflow.blocks()
    expect(after).not.toBe(before)
    expect(after[0]).toBe(before[0])
    expect(after[1]).toBe(before[1])
    expect(after[2]).not.toBe(before[2])

    // Removing a block takes its connections with it, in one transaction.
    transactions = 0
    a.workflow.removeBlock(gen)
    expect(transactions).toBe(1)
    expect(a.workflow.connections()).toEqual([])
    await untilDoc(b, () => b.workflow.blocks().length === 2, 'b to see the removal')
    expect(b.workflow.connections()).toEqual([])

    // Inside one transaction the helpers see what the transaction already did.
    a.workflow.transact(() => {
      const extra = a.workflow.addBlock({ type: 'delay', position: { x: 0, y: 0 }, config: { seconds: 1 } })
      expect(a.workflow.block(extra)?.type).toBe('delay')
      expect(a.workflow.connect({ source: input, target: extra })).toBeTruthy()
      expect(a.workflow.connect({ source: input, target: extra })).toBeNull()
    })
    expect(a.workflow.connections()).toHaveLength(1)
  })

  it('undo and redo only my changes, never the viewport', async () => {
    const wf = await newWorkflow(server)
    const a = open(server.url, 'ada', wf)
    const b = open(server.url, 'bob', wf)
    await Promise.all([a.whenSynced(), b.whenSynced()])

    const mine = a.workflow.addBlock({ type: 'transform', position: { x: 0, y: 0 }, config: { template: '1' } })
    await untilDoc(b, () => !!b.workflow.block(mine), 'b to see a’s block')
    const theirs = b.workflow.addBlock({ type: 'delay', position: { x: 50, y: 50 }, config: { seconds: 1 } })
    await untilDoc(a, () => !!a.workflow.block(theirs), 'a to see b’s block')
    // A drag lands once: one step however far it went.
    a.workflow.moveBlock(mine, { x: 300, y: 300 })
    a.workflow.setViewport({ x: 10, y: 20, zoom: 2 })
    b.workflow.updateBlock(theirs, { config: { seconds: 3 } })
    await untilDoc(a, () => a.workflow.block(theirs)?.config.seconds === 3, 'a to see b’s edit')

    expect(a.undo.canUndo).toBe(true)
    a.undo.undo()
    expect(a.workflow.block(mine)!.position).toEqual({ x: 0, y: 0 })
    expect(a.workflow.viewport()).toEqual({ x: 10, y: 20, zoom: 2 })
    a.undo.undo()
    expect(a.workflow.block(mine)).toBeUndefined()
    expect(a.undo.canUndo).toBe(false)
    // B's block and B's edit are untouched, here and there.
    expect(a.workflow.block(theirs)!.config.seconds).toBe(3)
    await untilDoc(b, () => !b.workflow.block(mine), 'b to see the undo')
    expect(b.workflow.block(theirs)!.config.seconds).toBe(3)

    a.undo.redo()
    a.undo.redo()
    expect(a.workflow.block(mine)!.position).toEqual({ x: 300, y: 300 })
    await untilDoc(b, () => b.workflow.block(mine)?.position.x === 300, 'b to see the redo')
    expect(b.undo.canUndo).toBe(true)
    b.undo.undo()
    expect(b.workflow.block(theirs)!.config.seconds).toBe(1)
    expect(b.workflow.block(mine)).toBeDefined()
  })

  it('presence: others see my cursor; during my reconnect they stay, marked stale', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const a = open(url, 'ada', wf, { staleGraceMs: 30000 })
    const b = open(server.url, 'bob', wf)
    await Promise.all([a.whenSynced(), b.whenSynced()])
    b.presence.update({ cursor: { x: 5, y: 6 }, selected: 'x' })
    const seen = () => a.presence.others().find((p) => p.user.name === 'bob')
    await new Promise<void>((resolve) => {
      const check = () => seen()?.cursor?.x === 5 && resolve()
      a.presence.subscribe(check)
      check()
    })
    expect(seen()).toMatchObject({ cursor: { x: 5, y: 6 }, selected: 'x', stale: false })

    proxy.refuse = true
    proxy.cut()
    await untilRoom(a, 'status', () => a.status === 'reconnecting', 'a to notice the cut')
    expect(seen()?.stale).toBe(true)
    proxy.refuse = false
    await untilRoom(a, 'synced', () => a.synced, 'a to resync')
    await new Promise<void>((resolve) => {
      const check = () => seen()?.stale === false && resolve()
      a.presence.subscribe(check)
      check()
    })
    proxy.close()
  })
})

describe('save status', () => {
  it('saving until acknowledged, offline with unsaved changes across a cut, saved after reconnect', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const a = open(url, 'ada', wf)
    await a.whenSynced()
    await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'saved after the handshake')

    proxy.mode = 'hold-acks'
    const first = a.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    expect(a.saveStatus).toBe('saving')
    proxy.release()
    await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'saved once acknowledged')

    // Acks withheld, then the network dies: the change is not known to be stored.
    proxy.mode = 'hold-acks'
    const second = a.workflow.addBlock({ type: 'output', position: { x: 100, y: 0 } })
    expect(a.saveStatus).toBe('saving')
    proxy.refuse = true
    proxy.cut()
    await untilRoom(a, 'save', () => a.saveStatus === 'offline', 'offline with unsaved changes')
    // Edits while offline stay unsaved.
    const third = a.workflow.addBlock({ type: 'delay', position: { x: 200, y: 0 }, config: { seconds: 2 } })
    expect(a.saveStatus).toBe('offline')

    proxy.mode = 'pass'
    proxy.refuse = false
    await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'saved after the reconnect')
    // Everything is really on the server: a fresh editor sees all three.
    const fresh = open(server.url, 'cy', wf)
    await fresh.whenSynced()
    expect(fresh.workflow.blocks().map((b) => b.id).sort()).toEqual([first, second, third].sort())
    proxy.close()
  })

  it('is unknown when the server does not acknowledge', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    proxy.mode = 'drop-extensions'
    const url = await proxy.ready()
    const a = open(url, 'ada', wf)
    await a.whenSynced()
    a.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
    await untilRoom(a, 'save', () => a.saveStatus === 'unknown', 'unknown without acknowledgements')
    // The edit still syncs: unknown is about saves, not about syncing.
    const b = open(server.url, 'bob', wf)
    await b.whenSynced()
    await untilDoc(b, () => b.workflow.blocks().length === 1, 'b to get the block')
    proxy.close()
  })

  it('one socket for a StrictMode-style enter, leave, enter', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const c = client(url, 'ada')
    clients.push(c)
    const first = c.enterRoom(wf)
    first.leave()
    const second = c.enterRoom(wf)
    expect(second.room).toBe(first.room)
    await second.room.whenSynced()
    expect(proxy.connections).toBe(1)
    second.leave()
    await untilRoom(second.room, 'status', () => second.room.status === 'disconnected', 'the room to close after the last leave')
    proxy.close()
  })
})

describe('liveness', () => {
  it('a socket that stops answering is replaced on a probe', async () => {
    const wf = await newWorkflow(server)
    const proxy = new Proxy(server.url)
    const url = await proxy.ready()
    const a = open(url, 'ada', wf)
    await a.whenSynced()
    await untilRoom(a, 'save', () => a.saveStatus === 'saved', 'saved')
    // A black hole: the proxy keeps the socket open but forwards nothing back.
    proxy.blackhole()
    a.checkLiveness()
    await untilRoom(a, 'status', () => a.status === 'reconnecting', 'the dead socket to be dropped')
    await untilRoom(a, 'synced', () => a.synced, 'a fresh socket to sync')
    expect(proxy.connections).toBe(2)
    proxy.close()
  })
})
