import { useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from 'react'
import {
  ReactFlow,
  useReactFlow,
  useStore,
  type EdgeChange,
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
import type { Peer } from '@resonant/client'
import { useRoom } from './context.js'
import { useBlocks, useConnections, useOthers } from './hooks.js'
import { jsonEqual } from './store.js'
import { FlowModel, selectRemote, type BlockNode, type ConnectionEdge } from './flow-model.js'

export type { BlockNode, BlockNodeData, ConnectionEdge, ConnectionEdgeData } from './flow-model.js'

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

/**
 * Binds the room's workflow to React Flow: blocks → nodes, connections → edges.
 * Selection, dragging and measured sizes stay local (never in the document); a drag is
 * written to the document once, on drop, and shared live through presence meanwhile.
 * A drag step or an edit redoes one node, not every node ({@link FlowModel}). Connections the
 * server would refuse are drawn dashed red (`edge.data.problem` says why) so they can be deleted.
 */
export function useFlow(options: UseFlowOptions = {}): FlowBinding {
  const { syncViewport = false, shareDrag = true } = options
  const room = useRoom()
  const blocks = useBlocks()
  const connections = useConnections()
  const remote = useOthers(selectRemote, jsonEqual)
  const [model] = useState(() => new FlowModel())
  // Local changes live in the model; this re-renders when they happened.
  const [version, setVersion] = useState(0)
  const rerender = useCallback(() => setVersion(model.version), [model])
  const pendingDrop = useRef(new Map<string, XYPosition>())

  model.setBlocks(blocks)
  model.setConnections(connections)
  model.setRemote(remote)
  const nodes = useMemo(() => model.nodes(), [model, blocks, remote, version])
  const edges = useMemo(() => model.edges(), [model, blocks, connections, version])

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
      model.landed(drops.map(([id]) => id))
      rerender()
      if (shareDrag) room.presence.update({ drag: null })
    },
    [room, shareDrag, model, rerender],
  )

  const onNodesChange = useCallback(
    (changes: NodeChange<BlockNode>[]) => {
      const before = model.version
      const { moves, drops } = model.applyNodeChanges(changes)
      for (const d of drops) pendingDrop.current.set(d.id, d.position)
      if (model.version !== before) rerender()
      if (moves.length) {
        const workflow = room.workflow
        workflow.transact(() => {
          for (const { id, position } of moves) workflow.moveBlock(id, position)
        })
      }
      if (pendingDrop.current.size) {
        // Normally onNodeDragStop follows synchronously; this covers an aborted drag.
        queueMicrotask(() => {
          if (pendingDrop.current.size) flushDrops([])
        })
      }
    },
    [room, model, flushDrops, rerender],
  )

  const onEdgesChange = useCallback(
    (changes: EdgeChange<ConnectionEdge>[]) => {
      const before = model.version
      model.applyEdgeChanges(changes)
      if (model.version !== before) rerender()
    },
    [model, rerender],
  )

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
  const selectedBlockIds = model.selectedBlockIds()
  const selectedConnectionIds = model.selectedConnectionIds()

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
  /**
   * Milliseconds over which a remote cursor glides to its next reported position (reports
   * come at most every `presenceThrottleMs`, 50 ms, so without it cursors jump). 0 turns it off.
   * Default 80.
   */
  smoothMs?: number
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
export function RemoteCursors({ renderCursor, smoothMs = 80 }: RemoteCursorsProps) {
  const peers = useOthers(withCursor)
  const [tx, ty, zoom] = useStore((s) => s.transform)
  // Two layers: the viewport transform (pans and zooms apply at once) and, inside it, each
  // cursor at its flow position with a transition, so only the cursor's own moves are eased.
  return (
    <div
      className="resonant-cursors"
      style={{ position: 'absolute', inset: 0, pointerEvents: 'none', zIndex: 1000, overflow: 'hidden' }}
    >
      <div style={{ position: 'absolute', left: 0, top: 0, transformOrigin: '0 0', transform: `translate(${tx}px, ${ty}px) scale(${zoom})` }}>
        {peers.map((p) => (
          <div
            key={p.clientId}
            data-cursor={p.user.name}
            style={{
              position: 'absolute',
              left: 0,
              top: 0,
              transform: `translate(${p.cursor!.x}px, ${p.cursor!.y}px)`,
              transition: smoothMs > 0 ? `transform ${smoothMs}ms linear` : undefined,
              opacity: p.stale ? 0.4 : 1,
              willChange: 'transform',
            }}
          >
            <div style={{ transformOrigin: '0 0', transform: `scale(${1 / zoom})` }}>
              {renderCursor ? renderCursor(p) : <DefaultCursor peer={p} />}
            </div>
          </div>
        ))}
      </div>
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
