// The workflow helpers on bare Y.Docs exchanging updates: concurrent edits and their repair,
// the block/connection index, and undo's capture window. No server needed.
import { describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import { UndoController, WorkflowDoc, type RepairReport } from '../src/index.js'

/** One replica: a doc, its helpers, and the updates it made that the others have not seen. */
interface Peer {
  doc: Y.Doc
  wf: WorkflowDoc
  origin: object
  repairs: RepairReport[]
}

function peer(clientID: number): Peer {
  const doc = new Y.Doc()
  doc.clientID = clientID
  const origin = { local: true }
  const wf = new WorkflowDoc(doc, origin, { local: true, untracked: true })
  const repairs: RepairReport[] = []
  wf.onRepair((r) => repairs.push(r))
  return { doc, wf, origin, repairs }
}

/**
 * Exchanges state until nothing new flows (repairs made on receipt are updates too); fails
 * if the peers keep producing updates, which would be two repairs fighting.
 */
function sync(...peers: Peer[]): number {
  for (let round = 1; round <= 10; round++) {
    let moved = false
    for (const from of peers) {
      for (const to of peers) {
        if (from === to) continue
        const diff = Y.encodeStateAsUpdate(from.doc, Y.encodeStateVector(to.doc))
        const before = Y.encodeStateVector(to.doc)
        Y.applyUpdate(to.doc, diff, 'remote')
        if (!equalBytes(before, Y.encodeStateVector(to.doc))) moved = true
      }
    }
    if (!moved) return round
  }
  throw new Error('peers did not converge in 10 rounds')
}

function equalBytes(a: Uint8Array, b: Uint8Array) {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/**
 * The server's validation rules that concurrent edits can break (crates/resonant-engine/src/graph.rs:
 * `parse_blocks` refuses a repeated block id, `parse_connections` a connection naming a
 * missing block), plus what makes an edge invisible or undeletable in the editor (a repeated
 * connection id, two edges with the same ends and handles).
 */
function engineProblems(doc: Y.Doc): string[] {
  const content = { blocks: doc.getArray('blocks').toJSON(), connections: doc.getArray('connections').toJSON() }
  const problems: string[] = []
  const ids = new Set<string>()
  for (const b of content.blocks) {
    if (typeof b.id !== 'string' || !b.id) problems.push('bad-id: missing')
    else if (ids.has(b.id)) problems.push(`bad-id: ${b.id} repeated`)
    else ids.add(b.id)
  }
  const connIds = new Set<string>()
  const ends = new Set<string>()
  for (const c of content.connections) {
    if (!ids.has(c.source) || !ids.has(c.target)) problems.push(`dangling-connection: ${c.id}`)
    if (connIds.has(c.id)) problems.push(`repeated connection id ${c.id}`)
    connIds.add(c.id)
    const key = JSON.stringify([c.source, c.sourceHandle ?? null, c.target, c.targetHandle ?? null])
    if (ends.has(key)) problems.push(`repeated edge ${key}`)
    ends.add(key)
  }
  return problems
}

/** Three blocks in a chain, the same on every peer. */
function chain(...peers: Peer[]) {
  const [a] = peers
  a.wf.addBlock({ id: 'in', type: 'input', position: { x: 0, y: 0 } })
  a.wf.addBlock({ id: 'gen', type: 'ai', position: { x: 200, y: 0 } })
  a.wf.addBlock({ id: 'out', type: 'output', position: { x: 400, y: 0 } })
  a.wf.connect({ source: 'in', target: 'gen' })
  a.wf.connect({ source: 'gen', target: 'out' })
  sync(...peers)
}

describe('concurrent edits are repaired', () => {
  it('a connection to a block removed concurrently is dropped on both sides', () => {
    const a = peer(1)
    const b = peer(2)
    chain(a, b)
    a.wf.addBlock({ id: 'extra', type: 'transform', position: { x: 200, y: 200 } })
    sync(a, b)
    // Offline from each other: b deletes `extra` (and the connections it sees), a connects to it.
    b.wf.removeBlock('extra')
    expect(a.wf.connect({ source: 'gen', target: 'extra' })).toBeTruthy()
    expect(a.wf.connect({ source: 'extra', target: 'out' })).toBeTruthy()
    sync(a, b)
    expect(engineProblems(a.doc)).toEqual([])
    expect(a.doc.getArray('connections').toJSON()).toEqual(b.doc.getArray('connections').toJSON())
    expect(a.wf.connections().map((c) => `${c.source}>${c.target}`)).toEqual(['in>gen', 'gen>out'])
    expect(b.wf.connections()).toEqual(a.wf.connections())
    expect([...a.repairs, ...b.repairs].flatMap((r) => r.danglingConnections)).toHaveLength(2)
  })

  it('the same edge drawn by two users at once ends as one edge, and ids never collide', () => {
    const a = peer(1)
    const b = peer(2)
    chain(a, b)
    const ea = a.wf.connect({ source: 'in', target: 'out' })
    const eb = b.wf.connect({ source: 'in', target: 'out' })
    expect(ea).not.toBe(eb)
    sync(a, b)
    expect(engineProblems(a.doc)).toEqual([])
    const edges = a.wf.connections().filter((c) => c.source === 'in' && c.target === 'out')
    expect(edges).toHaveLength(1)
    expect(b.wf.connections()).toEqual(a.wf.connections())
  })

  it('two edges sharing an id (as old clients wrote them) end as one, identically everywhere', () => {
    const a = peer(1)
    const b = peer(2)
    chain(a, b)
    // The old deterministic id, written by each side without seeing the other's.
    for (const p of [a, b]) {
      p.doc.transact(() => {
        const m = new Y.Map<unknown>()
        m.set('id', 'e-in-out')
        m.set('source', 'in')
        m.set('target', p === a ? 'out' : 'gen')
        m.set('targetHandle', p === a ? null : 'x')
        p.wf.connectionsArray.push([m])
      })
    }
    sync(a, b)
    expect(engineProblems(a.doc)).toEqual([])
    expect(a.doc.getArray('connections').toJSON()).toEqual(b.doc.getArray('connections').toJSON())
    expect(a.wf.connections().filter((c) => c.id === 'e-in-out')).toHaveLength(1)
  })

  it('blocks added under the same id concurrently: the oldest is kept everywhere, its connections stay', () => {
    const a = peer(1)
    const b = peer(2)
    chain(a, b)
    a.wf.addBlock({ id: 'sum', type: 'transform', position: { x: 0, y: 100 } })
    b.wf.addBlock({ id: 'sum', type: 'delay', position: { x: 0, y: 300 } })
    b.wf.connect({ source: 'sum', target: 'out' })
    sync(a, b)
    expect(engineProblems(a.doc)).toEqual([])
    expect(a.wf.block('sum')!.type).toBe('transform') // client 1's item is the oldest id
    expect(b.wf.block('sum')).toEqual(a.wf.block('sum'))
    expect(a.wf.blocks().filter((x) => x.id === 'sum')).toHaveLength(1)
    expect(a.wf.connections().some((c) => c.source === 'sum' && c.target === 'out')).toBe(true)
  })

  it('three peers repairing the same conflict at once converge without a second round of repairs', () => {
    const peers = [peer(3), peer(1), peer(2)]
    chain(...peers)
    peers[0].wf.removeBlock('gen')
    peers[1].wf.connect({ source: 'gen', target: 'in', targetHandle: 'h' })
    peers[2].wf.connect({ source: 'gen', target: 'in', targetHandle: 'h' })
    peers[2].wf.connect({ source: 'in', target: 'out' })
    peers[1].wf.connect({ source: 'in', target: 'out' })
    // Each pair first, so two replicas repair the same conflict independently.
    sync(peers[1], peers[2])
    sync(peers[0], peers[1])
    const rounds = sync(...peers)
    expect(rounds).toBeLessThanOrEqual(3)
    for (const p of peers) {
      expect(engineProblems(p.doc)).toEqual([])
      expect(p.doc.getArray('connections').toJSON()).toEqual(peers[0].doc.getArray('connections').toJSON())
    }
    expect(peers[0].wf.connections().map((c) => `${c.source}>${c.target}`)).toEqual(['in>out'])
    // Quiescent: a further exchange moves nothing.
    expect(sync(...peers)).toBe(1)
  })

  it('a repair is not an undo step, and undo cannot bring the conflict back', () => {
    const a = peer(1)
    const b = peer(2)
    chain(a, b)
    const undo = new UndoController(a.wf, a.origin)
    b.wf.removeBlock('out')
    a.wf.connect({ source: 'in', target: 'out' })
    sync(a, b)
    expect(a.repairs.length + b.repairs.length).toBeGreaterThan(0)
    expect(engineProblems(a.doc)).toEqual([])
    // My connect is the only step; undoing it does not resurrect anything.
    undo.undo()
    expect(undo.canUndo).toBe(false)
    sync(a, b)
    expect(engineProblems(a.doc)).toEqual([])
    expect(engineProblems(b.doc)).toEqual([])
  })
})

describe('the index', () => {
  it('blocks(), block() and connections() agree with a fresh read through random concurrent edits', () => {
    const peers = [peer(1), peer(2), peer(3)]
    const undos = peers.map((p) => new UndoController(p.wf, p.origin, { captureMs: 0 }))
    let seed = 42
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    const types = ['transform', 'ai', 'delay'] as const
    for (let step = 0; step < 600; step++) {
      const p = peers[rnd(3)]
      const ids = p.wf.blocks().map((b) => b.id)
      const pick = () => ids[rnd(ids.length)]
      const op = rnd(14)
      if (op < 3 || ids.length < 3) {
        // Ids from a small pool, so peers add the same id concurrently now and then.
        const id = `b${rnd(60)}`
        if (!p.wf.block(id)) p.wf.addBlock({ id, type: types[rnd(3)], position: { x: step, y: 0 } })
      }
      else if (op < 6) p.wf.connect({ source: pick(), target: pick(), sourceHandle: rnd(2) ? 'h' : null })
      else if (op < 7) p.wf.removeBlock(pick())
      else if (op < 8) p.wf.updateBlock(pick(), { data: { label: `L${step}` } })
      else if (op < 9) p.wf.moveBlock(pick(), { x: step, y: step })
      else if (op < 10 && p.wf.connections().length) p.wf.disconnect(p.wf.connections()[rnd(p.wf.connections().length)].id)
      else if (op === 10) undos[peers.indexOf(p)].undo()
      else if (op === 11) undos[peers.indexOf(p)].redo()
      else sync(peers[rnd(3)], peers[rnd(3)])
      for (const q of peers) {
        const fresh = q.doc.getArray<Y.Map<unknown>>("blocks").toJSON()
        // An undo can leave a block without a position (its old value was overwritten
        // concurrently): the helpers read it as 0, 0.
        expect(q.wf.blocks().map((b) => [b.id, b.position.x, b.data.label])).toEqual(fresh.map((b) => [b.id, b.position?.x ?? 0, b.data.label]))
        for (const b of fresh.slice(0, 3)) expect(q.wf.block(b.id)?.id).toBe(b.id)
        expect(q.wf.connections()).toEqual(q.doc.getArray('connections').toJSON())
      }
    }
    sync(...peers)
    for (const p of peers) {
      expect(engineProblems(p.doc)).toEqual([])
      expect(p.doc.getArray('blocks').toJSON()).toEqual(peers[0].doc.getArray('blocks').toJSON())
    }
    // The run met every kind of conflict, so the checks above covered the repairs too.
    const repairs = peers.flatMap((p) => p.repairs)
    expect(repairs.flatMap((r) => r.duplicateBlocks).length).toBeGreaterThan(0)
    expect(repairs.flatMap((r) => r.danglingConnections).length).toBeGreaterThan(0)
    expect(repairs.flatMap((r) => r.duplicateConnections).length).toBeGreaterThan(0)
  })

  it('an edit keeps every other block and connection object, and the arrays change only when needed', () => {
    const a = peer(1)
    chain(a)
    const blocks = a.wf.blocks()
    const conns = a.wf.connections()
    a.wf.updateBlock('gen', { data: { label: 'Write' } })
    const after = a.wf.blocks()
    expect(after).not.toBe(blocks)
    expect(after[0]).toBe(blocks[0])
    expect(after[2]).toBe(blocks[2])
    expect(after[1].data.label).toBe('Write')
    expect(a.wf.connections()).toBe(conns)
    a.wf.connect({ source: 'in', target: 'out' })
    const more = a.wf.connections()
    expect(more.slice(0, 2)).toEqual(conns)
    expect(more[0]).toBe(conns[0])
    expect(a.wf.blocks()).toBe(after)
  })
})

describe('undo steps', () => {
  /** A peer with an undo controller on a clock the test moves. */
  function editor() {
    const p = peer(1)
    let now = 1_000_000
    const undo = new UndoController(p.wf, p.origin, { now: () => now })
    return { ...p, undo, tick: (ms: number) => (now += ms) }
  }

  it('a word typed key by key is one step; a pause of 500 ms starts the next', () => {
    const e = editor()
    e.wf.addBlock({ id: 'gen', type: 'ai', position: { x: 0, y: 0 } })
    const type = (text: string, from = '') => {
      for (let i = 1; i <= text.length; i++) {
        e.tick(120)
        e.wf.updateBlock('gen', { data: { label: from + text.slice(0, i) } })
      }
    }
    type('Write')
    e.tick(600)
    type(' about', 'Write')
    expect(e.undo.manager.undoStack).toHaveLength(3) // the add, then one per word
    e.undo.undo()
    expect(e.wf.block('gen')!.data.label).toBe('Write')
    e.undo.undo()
    expect(e.wf.block('gen')!.data.label).toBe('AI')
    e.undo.redo()
    expect(e.wf.block('gen')!.data.label).toBe('Write')
  })

  it('different fields, structural actions and grouped transactions stay separate steps however fast', () => {
    const e = editor()
    e.wf.addBlock({ id: 'a', type: 'transform', position: { x: 0, y: 0 } })
    e.tick(10)
    e.wf.addBlock({ id: 'b', type: 'output', position: { x: 0, y: 0 } })
    e.tick(10)
    e.wf.connect({ source: 'a', target: 'b' })
    e.tick(10)
    e.wf.updateBlock('a', { data: { label: 'x' } })
    e.tick(10)
    e.wf.updateBlock('a', { config: { template: 'y' } })
    e.tick(10)
    e.wf.moveBlock('a', { x: 5, y: 5 })
    e.tick(10)
    e.wf.moveBlock('a', { x: 6, y: 6 }) // a nudge of the same block merges
    e.tick(10)
    e.wf.transact(() => e.wf.updateBlock('a', { config: { template: 'z' } }))
    e.tick(10)
    e.wf.transact(() => e.wf.updateBlock('a', { config: { template: 'w' } }))
    expect(e.undo.manager.undoStack).toHaveLength(8)
    e.undo.undo()
    expect(e.wf.block('a')!.config.template).toBe('z')
    // A binding's own keyed writes (a text field, say) merge the same way.
    const text = new Y.Text()
    const data = e.wf.blocksArray.get(0).get('data') as Y.Map<unknown>
    e.wf.transact(() => data.set('notes', text))
    for (const ch of 'hey') {
      e.tick(50)
      e.wf.transactMerging('text:a:notes', () => text.insert(text.length, ch))
    }
    e.tick(50)
    e.wf.updateBlock('a', { data: { label: 'after' } })
    expect(e.undo.manager.undoStack).toHaveLength(10)
    e.undo.undo()
    e.undo.undo()
    expect(text.toString()).toBe('')
  })
})

describe('connections written in two steps by another client', () => {
  it('a connection map whose keys arrive after the map itself is listed (by a viewer, which does not repair)', () => {
    const a = peer(1)
    a.wf.repairs = false
    const foreign = new Y.Doc()
    foreign.clientID = 2
    const send = () => Y.applyUpdate(a.doc, Y.encodeStateAsUpdate(foreign, Y.encodeStateVector(a.doc)), 'remote')
    const blocks = foreign.getArray<Y.Map<unknown>>('blocks')
    const conns = foreign.getArray<Y.Map<unknown>>('connections')
    foreign.transact(() => {
      for (const [id, type] of [['x', 'input'], ['y', 'output']]) {
        const b = new Y.Map<unknown>()
        blocks.push([b])
        b.set('id', id)
        b.set('type', type)
        b.set('position', { x: 0, y: 0 })
      }
    })
    // Not the SDK: an empty map first, its keys in a later transaction.
    const m = new Y.Map<unknown>()
    foreign.transact(() => conns.push([m]))
    send()
    expect(a.wf.connections()).toEqual([])
    foreign.transact(() => {
      m.set('id', 'e-late')
      m.set('source', 'x')
      m.set('target', 'y')
    })
    send()
    expect(a.wf.connections().map((c) => c.id)).toEqual(['e-late'])
  })
})
