import type { Edge, EdgeChange, Node, NodeChange, XYPosition } from '@xyflow/react'
import { conditionHandles, connectionProblem, ERROR_HANDLE, routesErrors, type Block, type BlockType, type Connection, type Peer, type PresenceUser } from '@resonant/client'

/** `node.data` of a block's node. */
export interface BlockNodeData extends Record<string, unknown> {
  /** The block as the document holds it (stable object while unchanged). */
  block: Block
  /** `block.data.label`, or the type when there is none. */
  label: string
  /** Other editors who selected this block. */
  selectedBy: PresenceUser[]
  /** The editor dragging this block right now, if another one is. */
  draggedBy: PresenceUser | null
}

/** A React Flow node for a block; `type` is the block type, so `nodeTypes` can key custom nodes by it. */
export type BlockNode = Node<BlockNodeData, BlockType>

/** `edge.data` of a connection's edge. */
export interface ConnectionEdgeData extends Record<string, unknown> {
  /** Why the server's engine would refuse this connection (Run fails until it is deleted), or null. */
  problem: string | null
}

/** A React Flow edge for a connection. */
export type ConnectionEdge = Edge<ConnectionEdgeData>

/** What stays local to this editor for one node (never in the document). */
export interface LocalNodeState {
  selected?: boolean
  dragging?: boolean
  measured?: { width?: number; height?: number }
  /** My live drag position (not in the document until the drop). */
  position?: XYPosition
}

/** Others' drags and selections, by block id. */
export interface RemoteInfo {
  drags: Record<string, { position: XYPosition; user: PresenceUser }>
  selections: Record<string, PresenceUser[]>
}

/** Picks what the flow shows of others out of their presence. */
export function selectRemote(others: Peer[]): RemoteInfo {
  const drags: RemoteInfo['drags'] = {}
  const selections: RemoteInfo['selections'] = {}
  for (const p of others) {
    if (p.drag) drags[p.drag.blockId] = { position: p.drag.position, user: p.user }
    if (p.selected) (selections[p.selected] ??= []).push(p.user)
  }
  return { drags, selections }
}

/** What a batch of node changes asks to write to the document. */
export interface NodeChangeResult {
  /** Moves made without a drag (arrow keys): written at once. */
  moves: { id: string; position: XYPosition }[]
  /** Drags that ended: written once, on drop. */
  drops: { id: string; position: XYPosition }[]
}

const NO_USERS: PresenceUser[] = []
const INVALID_EDGE_STYLE = { stroke: '#e03131', strokeDasharray: '6 4', strokeWidth: 2 }
/** A block's error route (its `error` handle): red, so failures' paths stand apart. */
const ERROR_EDGE_STYLE = { stroke: '#e03131', strokeWidth: 2 }

interface NodeEntry {
  block: Block
  loc: LocalNodeState | undefined
  drag: RemoteInfo['drags'][string] | undefined
  sel: PresenceUser[]
  node: BlockNode
}

interface EdgeEntry {
  conn: Connection
  selected: boolean
  source: Block | undefined
  target: Block | undefined
  edge: ConnectionEdge
}

/**
 * React Flow's nodes and edges for a workflow, kept up to date per change instead of rebuilt:
 * a drag step replaces one node in a copy of the array, an edit of one block one node, and
 * the maps by id are rebuilt only when blocks are added or removed. Local node state lives in
 * a mutable map whose entries are replaced, never copied as a whole. Pure TypeScript (no
 * React), so the per-edit cost can be measured in Node (scripts/bench-edit.mjs).
 */
export class FlowModel {
  private blocks: Block[] = []
  /** Index of each block id in `blocks`; null after blocks were added or removed. */
  private pos: Map<string, number> | null = null
  private structural = true
  /** Indexes whose block object changed since the last `nodes()`. */
  private changedIdx: number[] = []
  private connections: Connection[] = []
  private connectionsChanged = true
  /** A change that can alter an edge's problem: blocks added or removed, or a condition edited. */
  private edgeRelevant = true
  private local = new Map<string, LocalNodeState>()
  private localEdges = new Map<string, boolean>()
  private remote: RemoteInfo = { drags: {}, selections: {} }
  /** Node ids whose local or remote state changed since the last `nodes()`. */
  private dirty = new Set<string>()
  private edgesDirty = true
  private nodeCache = new Map<string, NodeEntry>()
  private edgeCache = new Map<string, EdgeEntry>()
  private nodesOut: BlockNode[] = []
  private edgesOut: ConnectionEdge[] = []
  private selectedIds: string[] = []
  private selectedEdgeIds: string[] = []
  private selectionDirty = true
  /** Bumped on every local change, so a React binding knows to re-render. */
  version = 0

  /** The document's blocks (the client's array: the same object per unchanged block). */
  setBlocks(blocks: Block[]) {
    if (blocks === this.blocks) return
    const prev = this.blocks
    this.blocks = blocks
    if (this.structural) return
    if (blocks.length !== prev.length) return this.markStructural()
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i]
      const p = prev[i]
      if (b === p) continue
      if (b.id !== p.id) return this.markStructural()
      this.changedIdx.push(i)
      if (b.type === 'condition' || p.type === 'condition' || b.config.onError !== p.config.onError) this.edgeRelevant = true
    }
  }

  private markStructural() {
    this.structural = true
    this.pos = null
    this.changedIdx = []
    this.edgeRelevant = true
    this.selectionDirty = true
  }

  /** The document's connections. */
  setConnections(connections: Connection[]) {
    if (connections === this.connections) return
    this.connections = connections
    this.connectionsChanged = true
    this.selectionDirty = true
  }

  /** Others' drags and selections; only the blocks whose remote state changed are redone. */
  setRemote(remote: RemoteInfo) {
    if (remote === this.remote) return
    const prev = this.remote
    for (const id of new Set([...Object.keys(prev.drags), ...Object.keys(remote.drags)])) {
      if (JSON.stringify(prev.drags[id]) !== JSON.stringify(remote.drags[id])) this.dirty.add(id)
    }
    for (const id of new Set([...Object.keys(prev.selections), ...Object.keys(remote.selections)])) {
      if (JSON.stringify(prev.selections[id]) !== JSON.stringify(remote.selections[id])) this.dirty.add(id)
    }
    this.remote = remote
  }

  private setLocal(id: string, patch: LocalNodeState | null) {
    const cur = this.local.get(id)
    if (patch === null) this.local.delete(id)
    else this.local.set(id, { ...cur, ...patch })
    this.dirty.add(id)
    this.version++
  }

  /** Applies React Flow's node changes to the local state; returns what to write to the document. */
  applyNodeChanges(changes: NodeChange<BlockNode>[]): NodeChangeResult {
    const result: NodeChangeResult = { moves: [], drops: [] }
    for (const c of changes) {
      switch (c.type) {
        case 'select':
          if ((this.local.get(c.id)?.selected ?? false) !== c.selected) {
            this.setLocal(c.id, { selected: c.selected })
            this.selectionDirty = true
          }
          break
        case 'dimensions':
          if (c.dimensions) {
            const cur = this.local.get(c.id)?.measured
            if (cur?.width !== c.dimensions.width || cur?.height !== c.dimensions.height) {
              this.setLocal(c.id, { measured: { width: c.dimensions.width, height: c.dimensions.height } })
            }
          }
          break
        case 'position': {
          if (!c.position) break
          if (c.dragging) {
            this.setLocal(c.id, { dragging: true, position: c.position })
          } else if (this.local.get(c.id)?.dragging) {
            // The drop: kept local until the binding writes it (once), then `landed`.
            this.setLocal(c.id, { dragging: false, position: c.position })
            result.drops.push({ id: c.id, position: c.position })
          } else {
            result.moves.push({ id: c.id, position: c.position })
          }
          break
        }
        default:
          // add / replace / remove: the document is the source of truth (deletes go through the helpers).
          break
      }
    }
    return result
  }

  /** Drops my local positions of blocks whose drop was written to the document. */
  landed(ids: Iterable<string>) {
    for (const id of ids) {
      const loc = this.local.get(id)
      if (loc) this.local.set(id, { selected: loc.selected, measured: loc.measured })
      this.dirty.add(id)
    }
    this.version++
  }

  /** Applies React Flow's edge changes (selection) to the local state. */
  applyEdgeChanges(changes: EdgeChange<ConnectionEdge>[]) {
    for (const c of changes) {
      if (c.type === 'select' && (this.localEdges.get(c.id) ?? false) !== c.selected) {
        if (c.selected) this.localEdges.set(c.id, true)
        else this.localEdges.delete(c.id)
        this.edgesDirty = true
        this.selectionDirty = true
        this.version++
      }
    }
  }

  private posOf(id: string): number | undefined {
    if (!this.pos) {
      this.pos = new Map()
      this.blocks.forEach((b, i) => this.pos!.set(b.id, i))
    }
    return this.pos.get(id)
  }

  private blockOf(id: string): Block | undefined {
    const i = this.posOf(id)
    return i === undefined ? undefined : this.blocks[i]
  }

  /** The nodes; the same array, and the same object per unchanged node, until something changes. */
  nodes(): BlockNode[] {
    if (this.structural) {
      this.structural = false
      const cache = new Map<string, NodeEntry>()
      this.nodesOut = this.blocks.map((b) => {
        const e = this.entryFor(b)
        cache.set(b.id, e)
        return e.node
      })
      this.nodeCache = cache
      // Forget local state of blocks that no longer exist.
      for (const id of this.local.keys()) if (!cache.has(id)) this.local.delete(id)
      this.dirty.clear()
      return this.nodesOut
    }
    if (!this.changedIdx.length && !this.dirty.size) return this.nodesOut
    const out = this.nodesOut.slice()
    for (const i of this.changedIdx) out[i] = this.entryFor(this.blocks[i]).node
    for (const id of this.dirty) {
      const i = this.posOf(id)
      if (i !== undefined) out[i] = this.entryFor(this.blocks[i]).node
    }
    this.changedIdx = []
    this.dirty.clear()
    this.nodesOut = out
    return out
  }

  private entryFor(block: Block): NodeEntry {
    const loc = this.local.get(block.id)
    const drag = this.remote.drags[block.id]
    const sel = this.remote.selections[block.id] ?? NO_USERS
    const prev = this.nodeCache.get(block.id)
    if (prev && prev.block === block && prev.loc === loc && prev.drag === drag && prev.sel === sel) return prev
    const node: BlockNode = {
      id: block.id,
      type: block.type,
      position: loc?.position ?? drag?.position ?? block.position,
      data: {
        block,
        label: typeof block.data.label === 'string' && block.data.label ? block.data.label : block.type,
        selectedBy: sel,
        draggedBy: !loc?.position && drag ? drag.user : null,
      },
      selected: loc?.selected ?? false,
      dragging: loc?.dragging ?? false,
    }
    if (loc?.measured) node.measured = loc.measured
    const e = { block, loc, drag, sel, node }
    this.nodeCache.set(block.id, e)
    return e
  }

  /**
   * The edges; the same array until a connection, an edge's selection, or something an edge's
   * validity depends on changes. A connection the engine would refuse stays visible (drawn
   * dashed red from the block's first handle when its own handle is gone) so it can be deleted.
   */
  edges(): ConnectionEdge[] {
    if (this.structural) this.nodes()
    if (!this.connectionsChanged && !this.edgesDirty && !this.edgeRelevant) return this.edgesOut
    this.connectionsChanged = this.edgesDirty = this.edgeRelevant = false
    const cache = new Map<string, EdgeEntry>()
    let same = this.connections.length === this.edgesOut.length
    const out = this.connections.map((conn, i) => {
      const selected = this.localEdges.get(conn.id) ?? false
      const source = this.blockOf(conn.source)
      const target = this.blockOf(conn.target)
      const prev = this.edgeCache.get(conn.id)
      const hit =
        prev &&
        prev.conn === conn &&
        prev.selected === selected &&
        prev.target?.type === target?.type &&
        prev.source?.config.onError === source?.config.onError &&
        (prev.source === source || (prev.source?.type !== 'condition' && source?.type !== 'condition' && !!prev.source === !!source))
      const e: EdgeEntry = hit ? prev : { conn, selected, source, target, edge: makeEdge(conn, selected, source, target) }
      cache.set(conn.id, e)
      if (same && this.edgesOut[i] !== e.edge) same = false
      return e.edge
    })
    for (const id of this.localEdges.keys()) if (!cache.has(id)) this.localEdges.delete(id)
    this.edgeCache = cache
    if (!same) this.edgesOut = out
    return this.edgesOut
  }

  /** Ids of the blocks selected here, in document order; the same array while the selection is the same. */
  selectedBlockIds(): string[] {
    this.updateSelection()
    return this.selectedIds
  }

  /** Ids of the connections selected here; the same array while the selection is the same. */
  selectedConnectionIds(): string[] {
    this.updateSelection()
    return this.selectedEdgeIds
  }

  private updateSelection() {
    if (!this.selectionDirty) return
    this.selectionDirty = false
    const blocks = this.blocks.filter((b) => this.local.get(b.id)?.selected).map((b) => b.id)
    const edges = this.connections.filter((c) => this.localEdges.get(c.id)).map((c) => c.id)
    if (!sameItems(blocks, this.selectedIds)) this.selectedIds = blocks
    if (!sameItems(edges, this.selectedEdgeIds)) this.selectedEdgeIds = edges
  }
}

function makeEdge(conn: Connection, selected: boolean, source: Block | undefined, target: Block | undefined): ConnectionEdge {
  const problem = connectionProblem(conn, source, target)
  let sourceHandle = conn.sourceHandle ?? null
  // The edge's own handle is gone (a case removed, errors no longer routed): drawn from the
  // block's first handle instead, so it stays visible.
  if (source && sourceHandle !== null) {
    const exists =
      sourceHandle === ERROR_HANDLE
        ? routesErrors(source)
        : source.type !== 'condition' || conditionHandles(source.config).includes(sourceHandle)
    if (!exists) sourceHandle = null
  }
  const edge: ConnectionEdge = {
    id: conn.id,
    source: conn.source,
    target: conn.target,
    sourceHandle,
    targetHandle: conn.targetHandle ?? null,
    selected,
    data: { problem },
  }
  if (problem) {
    edge.className = 'resonant-invalid'
    edge.style = INVALID_EDGE_STYLE
    edge.label = '⚠ refused by Run: delete'
    edge.ariaLabel = problem
  } else if (sourceHandle === ERROR_HANDLE) {
    edge.className = 'resonant-error-route'
    edge.style = ERROR_EDGE_STYLE
    edge.ariaLabel = `error route from ${conn.source}`
  }
  return edge
}

function sameItems<T>(a: T[], b: T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
