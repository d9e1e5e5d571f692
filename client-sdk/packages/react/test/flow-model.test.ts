// The React Flow binding's model on a bare Y.Doc: per-change updates keep every untouched node
// and edge object, and connections the engine would refuse stay visible and deletable.
import { describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import { WorkflowDoc } from '@resonant/client'
import { FlowModel } from '../src/flow-model.js'

function setup(n = 50) {
  const wf = new WorkflowDoc(new Y.Doc(), {}, {})
  wf.transact(() => {
    for (let i = 0; i < n; i++) wf.addBlock({ id: `b${i}`, type: 'transform', position: { x: i * 10, y: 0 } })
  })
  const m = new FlowModel()
  const sync = () => {
    m.setBlocks(wf.blocks())
    m.setConnections(wf.connections())
    return { nodes: m.nodes(), edges: m.edges() }
  }
  return { wf, m, sync }
}

describe('FlowModel', () => {
  it('a drag step, a remote edit and a selection each redo only their node', () => {
    const { wf, m, sync } = setup()
    const first = sync().nodes
    expect(first.map((n) => n.id)).toEqual(wf.blocks().map((b) => b.id))

    const drop = m.applyNodeChanges([{ type: 'position', id: 'b7', position: { x: 1, y: 2 }, dragging: true }])
    expect(drop).toEqual({ moves: [], drops: [] })
    const dragged = sync().nodes
    expect(dragged).not.toBe(first)
    expect(dragged[7].position).toEqual({ x: 1, y: 2 })
    expect(dragged.filter((n, i) => n !== first[i]).map((n) => n.id)).toEqual(['b7'])

    wf.updateBlock('b3', { data: { label: 'Three' } })
    const edited = sync().nodes
    expect(edited[3].data.label).toBe('Three')
    expect(edited.filter((n, i) => n !== dragged[i]).map((n) => n.id)).toEqual(['b3'])

    // The drop is reported once, and the local position stays until the document has it.
    const end = m.applyNodeChanges([{ type: 'position', id: 'b7', position: { x: 5, y: 6 }, dragging: false }])
    expect(end.drops).toEqual([{ id: 'b7', position: { x: 5, y: 6 } }])
    wf.moveBlock('b7', { x: 5, y: 6 })
    m.landed(['b7'])
    expect(sync().nodes[7]).toMatchObject({ position: { x: 5, y: 6 }, dragging: false })

    m.applyNodeChanges([{ type: 'select', id: 'b9', selected: true }])
    const ids = m.selectedBlockIds()
    expect(ids).toEqual(['b9'])
    m.applyNodeChanges([{ type: 'position', id: 'b9', position: { x: 0, y: 0 }, dragging: true }])
    expect(m.selectedBlockIds()).toBe(ids)
    // A keyboard move (no drag) is written at once.
    expect(m.applyNodeChanges([{ type: 'position', id: 'b2', position: { x: 9, y: 9 } }]).moves).toEqual([{ id: 'b2', position: { x: 9, y: 9 } }])
  })

  it('blocks added and removed: nodes follow, local state of removed blocks is forgotten', () => {
    const { wf, m, sync } = setup(5)
    sync()
    m.applyNodeChanges([{ type: 'select', id: 'b1', selected: true }])
    sync()
    wf.removeBlock('b1')
    wf.addBlock({ id: 'n', type: 'output', position: { x: 0, y: 0 } })
    expect(sync().nodes.map((n) => n.id)).toEqual(['b0', 'b2', 'b3', 'b4', 'n'])
    expect(m.selectedBlockIds()).toEqual([])
  })

  it('a connection the engine refuses is drawn, marked, and from a handle that exists', () => {
    const { wf, sync } = setup(3)
    wf.addBlock({ id: 'if', type: 'condition', position: { x: 0, y: 100 } })
    const ok = wf.connect({ source: 'if', target: 'b1', sourceHandle: 'true' })!
    const bad = wf.connect({ source: 'if', target: 'b2', sourceHandle: 'maybe' })!
    const plain = wf.connect({ source: 'b0', target: 'b1' })!
    const { edges } = sync()
    const byId = new Map(edges.map((e) => [e.id, e]))
    expect(byId.get(ok)!.data!.problem).toBeNull()
    expect(byId.get(plain)!.data!.problem).toBeNull()
    expect(byId.get(bad)).toMatchObject({ sourceHandle: null, className: 'resonant-invalid' })
    expect(byId.get(bad)!.data!.problem).toMatch(/without one of its handles \(true, false\)/)
    expect(wf.connectionProblem(wf.connections().find((c) => c.id === bad)!)).toBe(byId.get(bad)!.data!.problem)

    // Editing the condition's cases revalidates its edges, and only the condition's change
    // touches edges: an edit elsewhere keeps the same array.
    wf.updateBlock('if', { config: { cases: [{ handle: 'maybe', when: 'true' }] } })
    const after = sync().edges
    expect(after.find((e) => e.id === bad)!.data!.problem).toBeNull()
    expect(after.find((e) => e.id === ok)!.data!.problem).toMatch(/maybe, default/)
    expect(after.find((e) => e.id === plain)).toBe(byId.get(plain))
    wf.updateBlock('b2', { data: { label: 'x' } })
    expect(sync().edges).toBe(after)
  })

  it('error routes: red from the error handle while the block routes its errors, refused otherwise', () => {
    const { wf, sync } = setup(3)
    const route = wf.connect({ source: 'b0', target: 'b1', sourceHandle: 'error' })!
    const plain = wf.connect({ source: 'b0', target: 'b2' })!
    let byId = new Map(sync().edges.map((e) => [e.id, e]))
    // b0 does not route its errors: the engine refuses the edge; it is drawn from b0's handle.
    expect(byId.get(route)).toMatchObject({ sourceHandle: null, className: 'resonant-invalid' })
    expect(byId.get(route)!.data!.problem).toMatch(/error handle, but its onError is not `route`/)
    expect(wf.connectionProblem(wf.connections().find((c) => c.id === route)!)).toBe(byId.get(route)!.data!.problem)

    // onError: route makes it an error route (and revalidates at once).
    wf.updateBlock('b0', { config: { onError: 'route' } })
    byId = new Map(sync().edges.map((e) => [e.id, e]))
    expect(byId.get(route)).toMatchObject({ sourceHandle: 'error', className: 'resonant-error-route' })
    expect(byId.get(route)!.data!.problem).toBeNull()
    expect(byId.get(plain)!.data!.problem).toBeNull()
    expect(byId.get(plain)!.className).toBeUndefined()

    // Nothing enters the workflow's error handler.
    wf.addBlock({ id: 'eh', type: 'errorHandler', position: { x: 0, y: 200 } })
    const into = wf.connect({ source: 'b2', target: 'eh' })!
    const out = wf.connect({ source: 'eh', target: 'b1' })!
    byId = new Map(sync().edges.map((e) => [e.id, e]))
    expect(byId.get(into)!.data!.problem).toMatch(/enters the error handler `eh`/)
    expect(byId.get(out)!.data!.problem).toBeNull()
  })
})
