import { useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from 'react'
import {
  ReactFlow,
  useReactFlow,
  useStore,
  type Edge,
  type EdgeChange,
  type Node,
  type NodeChange,
  type OnConnect,
  type OnDelete,
  type OnMove,
  type OnNodeDrag,
  type ReactFlowProps,
  type SelectionDragHandler,
  type Viewport as FlowViewport,
  type XYPosition,
  type Connection as FlowConnection,
} from '@xyflow/react'
import type { Block, BlockType, Connection, Peer, PresenceUser } from '@resonant/client'
import { useRoom } from './context.js'
import { useBlocks, useConnections, useOthers } from './hooks.js'
import { jsonEqual } from './store.js'

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
/** A React Flow edge for a connection. */
export type ConnectionEdge = Edge

interface LocalNodeState {
  selected?: boolean
  dragging?: boolean
  measured?: { width?: number; height?: number }
  /** My live drag position (not in the document until the drop). */
  position?: XYPosition
}

export interface UseFlowOptions {
  /** Write the viewport to the document when the user stops panning/zooming. Default false. */
  syncViewport?: boolean
  /** Publish the live drag position through presence. Default true. */
  shareDrag?: boolean
}

/** The props `useFlow` gives to `<ReactFlow>`, plus the local selection. */
export interface FlowBinding {
  nodes: BlockNode[]
  edges: ConnectionEdge[]
  onNodesChange: (changes: NodeChange<BlockNode>[]) => void
  onEdgesChange: (changes: EdgeChange<ConnectionEdge>[]) => void
  onConnect: OnConnect
  onNodeDrag: OnNodeDrag<BlockNode>
  onNodeDragStop: OnNodeDrag<BlockNode>
  onSelectionDrag: SelectionDragHandler<BlockNode>
  onSelectionDragStop: SelectionDragHandler<BlockNode>
  onDelete: OnDelete<BlockNode, ConnectionEdge>
  onMoveEnd: OnMove
  /** Ids of the blocks selected locally. */
  selectedBlockIds: string[]
  /** Ids of the connections selected locally. */
  selectedConnectionIds: string[]
}

interface RemoteInfo {
  drags: Record<string, { position: XYPosition; user: PresenceUser }>
  selections: Record<string, PresenceUser[]>
}

function selectRemote(others: Peer[]): RemoteInfo {
  const drags: RemoteInfo['drags'] = {}
  const selections: RemoteInfo['selections'] = {}
  for (const p of others) {
    if (p.drag) drags[p.drag.blockId] = { position: p.drag.position, user: p.user }
    if (p.selected) (selections[p.selected] ??= []).push(p.user)
  }
  return { drags, selections }
}

const NO_USERS: PresenceUser[] = []

/**
 * Binds the room's workflow to React Flow: blocks → nodes, connections → edges.
 * Selection, dragging and measured sizes stay local (never in the document); a drag is
 * written to the document once, on drop, and shared live through presence meanwhile.
 */
export function useFlow(options: UseFlowOptions = {}): FlowBinding {
  const { syncViewport = false, shareDrag = true } = options
  const room = useRoom()
  const blocks = useBlocks()
  const connections = useConnections()
  const remote = useOthers(selectRemote, jsonEqual)
  // Local state lives in refs (read synchronously by the handlers) mirrored into React state.
  const localNodesRef = useRef<ReadonlyMap<string, LocalNodeState>>(new Map())
  const localEdgesRef = useRef<ReadonlyMap<string, { selected?: boolean }>>(new Map())
  const [localNodes, setLocalNodesState] = useState(localNodesRef.current)
  const [localEdges, setLocalEdgesState] = useState(localEdgesRef.current)
  const setLocalNodes = useCallback(
    (fn: (prev: ReadonlyMap<string, LocalNodeState>) => ReadonlyMap<string, LocalNodeState>) => {
      const next = fn(localNodesRef.current)
      if (next !== localNodesRef.current) {
        localNodesRef.current = next
        setLocalNodesState(next)
      }
    },
    [],
  )
  const setLocalEdges = useCallback(
    (fn: (prev: ReadonlyMap<string, { selected?: boolean }>) => ReadonlyMap<string, { selected?: boolean }>) => {
      const next = fn(localEdgesRef.current)
      if (next !== localEdgesRef.current) {
        localEdgesRef.current = next
        setLocalEdgesState(next)
      }
    },
    [],
  )
  const pendingDrop = useRef(new Map<string, XYPosition>())

  // Forget local state of blocks and connections that no longer exist.
  useEffect(() => {
    const ids = new Set(blocks.map((b) => b.id))
    setLocalNodes((prev) => {
      if ([...prev.keys()].every((id) => ids.has(id))) return prev
      return new Map([...prev].filter(([id]) => ids.has(id)))
    })
  }, [blocks, setLocalNodes])
  useEffect(() => {
    const ids = new Set(connections.map((c) => c.id))
    setLocalEdges((prev) => {
      if ([...prev.keys()].every((id) => ids.has(id))) return prev
      return new Map([...prev].filter(([id]) => ids.has(id)))
    })
  }, [connections, setLocalEdges])

  const nodeCache = useRef(new Map<string, { key: unknown[]; node: BlockNode }>())
  const nodes = useMemo(() => {
    const next = new Map<string, { key: unknown[]; node: BlockNode }>()
    const out = blocks.map((block) => {
      const loc = localNodes.get(block.id)
      const drag = remote.drags[block.id]
      const sel = remote.selections[block.id] ?? NO_USERS
      const dragKey = drag ? JSON.stringify(drag) : ''
      const selKey = sel.length ? JSON.stringify(sel) : ''
      const key = [block, loc, dragKey, selKey]
      const prev = nodeCache.current.get(block.id)
      if (prev && prev.key.every((k, i) => k === key[i])) {
        next.set(block.id, prev)
        return prev.node
      }
      const position = loc?.position ?? drag?.position ?? block.position
      const node: BlockNode = {
        id: block.id,
        type: block.type,
        position,
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
      next.set(block.id, { key, node })
      return node
    })
    nodeCache.current = next
    return out
  }, [blocks, localNodes, remote])

  const edgeCache = useRef(new Map<string, { conn: Connection; selected: boolean; edge: ConnectionEdge }>())
  const edges = useMemo(() => {
    const next = new Map<string, { conn: Connection; selected: boolean; edge: ConnectionEdge }>()
    const out = connections.map((conn) => {
      const selected = localEdges.get(conn.id)?.selected ?? false
      const prev = edgeCache.current.get(conn.id)
      if (prev && prev.conn === conn && prev.selected === selected) {
        next.set(conn.id, prev)
        return prev.edge
      }
      const edge: ConnectionEdge = {
        id: conn.id,
        source: conn.source,
        target: conn.target,
        sourceHandle: conn.sourceHandle ?? null,
        targetHandle: conn.targetHandle ?? null,
        selected,
      }
      next.set(conn.id, { conn, selected, edge })
      return edge
    })
    edgeCache.current = next
    return out
  }, [connections, localEdges])

  const flushDrops = useCallback(
    (final: { id: string; position: XYPosition }[]) => {
      for (const n of final) pendingDrop.current.set(n.id, n.position)
      const drops = [...pendingDrop.current]
      pendingDrop.current.clear()
      if (drops.length) {
        const workflow = room.workflow
        workflow.transact(() => {
          for (const [id, position] of drops) {
            if (workflow.block(id)) workflow.moveBlock(id, { x: position.x, y: position.y })
          }
        })
      }
      setLocalNodes((prev) => {
        const m = new Map(prev)
        for (const [id] of drops) {
          const loc = m.get(id)
          if (loc) m.set(id, { selected: loc.selected, measured: loc.measured })
        }
        return m
      })
      if (shareDrag) room.presence.update({ drag: null })
    },
    [room, shareDrag, setLocalNodes],
  )

  const onNodesChange = useCallback(
    (changes: NodeChange<BlockNode>[]) => {
      const keyboardMoves: { id: string; position: XYPosition }[] = []
      setLocalNodes((prev) => {
        let m: Map<string, LocalNodeState> | null = null
        const set = (id: string, patch: LocalNodeState) => {
          m ??= new Map(prev)
          m.set(id, { ...m.get(id), ...patch })
        }
        for (const c of changes) {
          switch (c.type) {
            case 'select':
              if ((m ?? prev).get(c.id)?.selected !== c.selected) set(c.id, { selected: c.selected })
              break
            case 'dimensions':
              if (c.dimensions) {
                const cur = (m ?? prev).get(c.id)?.measured
                if (cur?.width !== c.dimensions.width || cur?.height !== c.dimensions.height) {
                  set(c.id, { measured: { width: c.dimensions.width, height: c.dimensions.height } })
                }
              }
              break
            case 'position': {
              if (!c.position) break
              const dragging = (m ?? prev).get(c.id)?.dragging
              if (c.dragging) {
                set(c.id, { dragging: true, position: c.position })
              } else if (dragging) {
                // The drop: kept local until onNodeDragStop writes it (once).
                set(c.id, { dragging: false, position: c.position })
                pendingDrop.current.set(c.id, c.position)
              } else {
                keyboardMoves.push({ id: c.id, position: c.position })
              }
              break
            }
            default:
              // add / replace / remove: the document is the source of truth (see onDelete).
              break
          }
        }
        return m ?? prev
      })
      if (keyboardMoves.length) {
        const workflow = room.workflow
        workflow.transact(() => {
          for (const { id, position } of keyboardMoves) workflow.moveBlock(id, position)
        })
      }
      if (pendingDrop.current.size) {
        // Normally onNodeDragStop follows synchronously; this covers an aborted drag.
        queueMicrotask(() => {
          if (pendingDrop.current.size) flushDrops([])
        })
      }
    },
    [room, flushDrops, setLocalNodes],
  )

  const onEdgesChange = useCallback((changes: EdgeChange<ConnectionEdge>[]) => {
    setLocalEdges((prev) => {
      let m: Map<string, { selected?: boolean }> | null = null
      for (const c of changes) {
        if (c.type === 'select' && (m ?? prev).get(c.id)?.selected !== c.selected) {
          m ??= new Map(prev)
          m.set(c.id, { selected: c.selected })
        }
      }
      return m ?? prev
    })
  }, [setLocalEdges])

  const onConnect = useCallback(
    (c: FlowConnection) => {
      room.workflow.connect({
        source: c.source,
        target: c.target,
        sourceHandle: c.sourceHandle ?? null,
        targetHandle: c.targetHandle ?? null,
      })
    },
    [room],
  )

  const onNodeDrag = useCallback<OnNodeDrag<BlockNode>>(
    (_e, node) => {
      if (shareDrag) room.presence.update({ drag: { blockId: node.id, position: { x: node.position.x, y: node.position.y } } })
    },
    [room, shareDrag],
  )
  const onNodeDragStop = useCallback<OnNodeDrag<BlockNode>>(
    (_e, node, nodes) => flushDrops((nodes.length ? nodes : [node]).map((n) => ({ id: n.id, position: n.position }))),
    [flushDrops],
  )
  const onSelectionDrag = useCallback<SelectionDragHandler<BlockNode>>(
    (_e, nodes) => {
      const n = nodes[0]
      if (shareDrag && n) room.presence.update({ drag: { blockId: n.id, position: { x: n.position.x, y: n.position.y } } })
    },
    [room, shareDrag],
  )
  const onSelectionDragStop = useCallback<SelectionDragHandler<BlockNode>>(
    (_e, nodes) => flushDrops(nodes.map((n) => ({ id: n.id, position: n.position }))),
    [flushDrops],
  )

  const onDelete = useCallback<OnDelete<BlockNode, ConnectionEdge>>(
    ({ nodes, edges }) => {
      const removed = new Set(nodes.map((n) => n.id))
      const workflow = room.workflow
      workflow.transact(() => {
        if (removed.size) workflow.removeBlocks([...removed])
        for (const e of edges) {
          if (!removed.has(e.source) && !removed.has(e.target)) workflow.disconnect(e.id)
        }
      })
    },
    [room],
  )

  const onMoveEnd = useCallback<OnMove>(
    (event, viewport: FlowViewport) => {
      if (syncViewport && event) room.workflow.setViewport({ x: viewport.x, y: viewport.y, zoom: viewport.zoom })
    },
    [room, syncViewport],
  )

  // The same array while the selection is the same: drags and measurements change the local
  // node state 60 times a second, and a new array each time would re-render every consumer.
  const selectedBlockIds = useStableArray(
    useMemo(() => blocks.filter((b) => localNodes.get(b.id)?.selected).map((b) => b.id), [blocks, localNodes]),
  )
  const selectedConnectionIds = useStableArray(
    useMemo(() => connections.filter((c) => localEdges.get(c.id)?.selected).map((c) => c.id), [connections, localEdges]),
  )

  // Share my selection (the first selected block) through presence.
  const firstSelected = selectedBlockIds[0] ?? null
  useEffect(() => {
    room.presence.update({ selected: firstSelected })
  }, [room, firstSelected])

  return {
    nodes,
    edges,
    onNodesChange,
    onEdgesChange,
    onConnect,
    onNodeDrag,
    onNodeDragStop,
    onSelectionDrag,
    onSelectionDragStop,
    onDelete,
    onMoveEnd,
    selectedBlockIds,
    selectedConnectionIds,
  }
}

/** Publishes my cursor (in flow coordinates) while the pointer is over the flow. Render inside `<ReactFlow>`. */
export function CursorTracker() {
  const room = useRoom()
  const { screenToFlowPosition } = useReactFlow()
  const domNode = useStore((s) => s.domNode)
  useEffect(() => {
    if (!domNode) return
    const move = (e: PointerEvent) => {
      const p = screenToFlowPosition({ x: e.clientX, y: e.clientY }, { snapToGrid: false })
      room.presence.update({ cursor: { x: p.x, y: p.y } })
    }
    const leave = () => room.presence.update({ cursor: null })
    domNode.addEventListener('pointermove', move)
    domNode.addEventListener('pointerleave', leave)
    return () => {
      domNode.removeEventListener('pointermove', move)
      domNode.removeEventListener('pointerleave', leave)
    }
  }, [room, domNode, screenToFlowPosition])
  return null
}

export interface RemoteCursorsProps {
  /** Draws one cursor; the default is an arrow with the name in the user's colour. */
  renderCursor?: (peer: Peer) => ReactNode
}

function DefaultCursor({ peer }: { peer: Peer }) {
  const { name, color } = peer.user
  return (
    <div className="resonant-cursor" data-testid={`remote-cursor-${name}`} data-stale={peer.stale || undefined}>
      <svg width="18" height="18" viewBox="0 0 18 18" style={{ display: 'block' }} aria-hidden="true">
        <path d="M1 1 L1 15 L5 11 L8 17 L10.5 16 L7.5 10 L13 10 Z" fill={color} stroke="white" strokeWidth="1" />
      </svg>
      <span
        className="resonant-cursor-name"
        style={{
          background: color,
          color: 'white',
          fontSize: 11,
          lineHeight: '16px',
          padding: '0 5px',
          borderRadius: 4,
          marginLeft: 12,
          whiteSpace: 'nowrap',
          display: 'inline-block',
        }}
      >
        {name}
      </span>
    </div>
  )
}

const withCursor = (others: Peer[]) => others.filter((p) => p.cursor)

/**
 * Other editors' cursors over the flow. Render inside `<ReactFlow>`: only this overlay
 * re-renders when a cursor moves or the viewport changes.
 */
export function RemoteCursors({ renderCursor }: RemoteCursorsProps) {
  const peers = useOthers(withCursor)
  const [tx, ty, zoom] = useStore((s) => s.transform)
  return (
    <div
      className="resonant-cursors"
      style={{ position: 'absolute', inset: 0, pointerEvents: 'none', zIndex: 1000, overflow: 'hidden' }}
    >
      {peers.map((p) => (
        <div
          key={p.clientId}
          style={{
            position: 'absolute',
            left: 0,
            top: 0,
            transform: `translate(${p.cursor!.x * zoom + tx}px, ${p.cursor!.y * zoom + ty}px)`,
            opacity: p.stale ? 0.4 : 1,
            willChange: 'transform',
          }}
        >
          {renderCursor ? renderCursor(p) : <DefaultCursor peer={p} />}
        </div>
      ))}
    </div>
  )
}

export type ResonantFlowProps = Omit<
  ReactFlowProps<BlockNode, ConnectionEdge>,
  'nodes' | 'edges' | 'defaultNodes' | 'defaultEdges'
> &
  UseFlowOptions & {
    /** Show other editors' cursors. Default true. */
    cursors?: boolean
    /** Publish my cursor. Default true. */
    trackCursor?: boolean
    renderCursor?: RemoteCursorsProps['renderCursor']
    /** Called when the local block selection changes. */
    onBlockSelectionChange?: (ids: string[]) => void
  }

/**
 * `<ReactFlow>` bound to the room's workflow ({@link useFlow}), with remote cursors and
 * my cursor's tracking. Handlers passed as props run after the binding's.
 */
export function ResonantFlow(props: ResonantFlowProps) {
  const {
    syncViewport,
    shareDrag,
    cursors = true,
    trackCursor = true,
    renderCursor,
    onBlockSelectionChange,
    children,
    onNodesChange,
    onEdgesChange,
    onConnect,
    onNodeDrag,
    onNodeDragStop,
    onSelectionDrag,
    onSelectionDragStop,
    onDelete,
    onMoveEnd,
    ...rest
  } = props
  const room = useRoom()
  const flow = useFlow({ syncViewport, shareDrag })
  const [initialViewport] = useState(() => room.workflow.viewport())
  const selectionCb = useRef(onBlockSelectionChange)
  selectionCb.current = onBlockSelectionChange
  useEffect(() => {
    selectionCb.current?.(flow.selectedBlockIds)
  }, [flow.selectedBlockIds])

  // The caller's handlers, read at call time so the handlers given to ReactFlow stay stable.
  const user = useRef(props)
  user.current = props
  const f = useRef(flow)
  f.current = flow
  const handlers = useMemo(
    () => ({
      onNodesChange: (c: NodeChange<BlockNode>[]) => (f.current.onNodesChange(c), user.current.onNodesChange?.(c)),
      onEdgesChange: (c: EdgeChange<ConnectionEdge>[]) => (f.current.onEdgesChange(c), user.current.onEdgesChange?.(c)),
      onConnect: ((c) => (f.current.onConnect(c), user.current.onConnect?.(c))) as OnConnect,
      onNodeDrag: ((e, n, ns) => (f.current.onNodeDrag(e, n, ns), user.current.onNodeDrag?.(e, n, ns))) as OnNodeDrag<BlockNode>,
      onNodeDragStop: ((e, n, ns) => (f.current.onNodeDragStop(e, n, ns), user.current.onNodeDragStop?.(e, n, ns))) as OnNodeDrag<BlockNode>,
      onSelectionDrag: ((e, ns) => (f.current.onSelectionDrag(e, ns), user.current.onSelectionDrag?.(e, ns))) as SelectionDragHandler<BlockNode>,
      onSelectionDragStop: ((e, ns) => (f.current.onSelectionDragStop(e, ns), user.current.onSelectionDragStop?.(e, ns))) as SelectionDragHandler<BlockNode>,
      onDelete: ((p) => (f.current.onDelete(p), user.current.onDelete?.(p))) as OnDelete<BlockNode, ConnectionEdge>,
      onMoveEnd: ((e, v) => (f.current.onMoveEnd(e, v), user.current.onMoveEnd?.(e, v))) as OnMove,
    }),
    [],
  )

  return (
    <ReactFlow<BlockNode, ConnectionEdge>
      defaultViewport={initialViewport}
      {...rest}
      nodes={flow.nodes}
      edges={flow.edges}
      {...handlers}
    >
      {trackCursor && <CursorTracker />}
      {cursors && <RemoteCursors renderCursor={renderCursor} />}
      {children}
    </ReactFlow>
  )
}

/** Returns the previous array while its items are the same. */
function useStableArray<T>(next: T[]): T[] {
  const ref = useRef(next)
  const prev = ref.current
  if (prev !== next && (prev.length !== next.length || prev.some((x, i) => x !== next[i]))) ref.current = next
  return ref.current
}
