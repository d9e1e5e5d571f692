import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { BroadcastSender, ResonantClient, Room } from '../src/index.js'
import { client, newWorkflow, startServer, until, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

function open(name: string, workflowId: string): Room {
  const c = client(server.url, name)
  clients.push(c)
  return c.enterRoom(workflowId).room
}

describe('broadcast events and custom presence', () => {
  it('an event reaches the other editors, stamped with the sender, never the sender itself', async () => {
    const wf = await newWorkflow(server)
    const a = open('ada', wf)
    const b = open('bob', wf)
    const c = open('cy', wf)
    await Promise.all([a.whenSynced(), b.whenSynced(), c.whenSynced()])
    const got: Record<string, Array<[unknown, BroadcastSender]>> = { ada: [], bob: [], cy: [] }
    a.onBroadcast((e, from) => got.ada!.push([e, from]))
    b.onBroadcast((e, from) => got.bob!.push([e, from]))
    c.onBroadcast((e, from) => got.cy!.push([e, from]))
    // Each room opts in before its sync step 1, so once synced the server relays to it.
    expect(a.broadcast({ kind: 'reaction', emoji: '🎉' })).toBe(true)
    const both = (cb: () => void) => {
      const offs = [b.onBroadcast(cb), c.onBroadcast(cb)]
      return () => offs.forEach((off) => off())
    }
    await until(both, () => got.bob!.length === 1 && got.cy!.length === 1, 'the event at bob and cy')
    expect(got.bob![0]![0]).toEqual({ kind: 'reaction', emoji: '🎉' })
    expect(typeof got.bob![0]![1].userId).toBe('string')
    expect(got.ada, 'no echo to the sender').toEqual([])
    expect(() => a.broadcast({ blob: 'x'.repeat(9000) })).toThrow(RangeError)
  })

  it('custom presence fields reach the others and can be removed', async () => {
    const wf = await newWorkflow(server)
    const a = open('ada', wf)
    const b = open('bob', wf)
    await Promise.all([a.whenSynced(), b.whenSynced()])
    const adaAtBob = () => b.presence.others().find((p) => p.user.name === 'ada')
    a.presence.updateCustom({ status: 'reviewing', zoom: 1.5 })
    await until((cb) => b.presence.subscribe(cb), () => adaAtBob()?.custom.status === 'reviewing', 'ada’s custom status')
    expect(adaAtBob()!.custom).toEqual({ status: 'reviewing', zoom: 1.5 })
    a.presence.updateCustom({ status: undefined })
    await until((cb) => b.presence.subscribe(cb), () => adaAtBob()?.custom.status === undefined, 'the status removed')
    expect(adaAtBob()!.custom).toEqual({ zoom: 1.5 })
  })

  it('is dropped, not queued, without an open connection', async () => {
    const wf = await newWorkflow(server)
    const a = open('ada', wf)
    expect(a.broadcast('too early')).toBe(false)
    await a.whenSynced()
    expect(a.broadcast('now')).toBe(true)
  })
})
