import { Component, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from 'react'
import { ReactFlowProvider, Background, Controls, MiniMap, useReactFlow } from '@xyflow/react'
import { blockSchema, type BlockType, type ResonantClient } from '@resonant/client'
import {
  ResonantProvider,
  RoomProvider,
  ResonantFlow,
  useLoaded,
  useRoom,
  useRoomError,
  useSynced,
  useUndoRedo,
  useLatestExecution,
  useEventListener,
} from '@resonant/react'
import { nodeTypes } from './nodes'
import { StatusBar } from './StatusBar'
import { Inspector } from './Inspector'
import { RunControls, RunLog } from './RunPanel'
import { BLOCK_TYPES, ExecutionContext } from './shared'
import { WorkflowHeader } from './WorkflowHeader'
import { VersionsPanel } from './VersionsPanel'
import { CommentsPanel } from './CommentsPanel'
import { TriggersPanel } from './TriggersPanel'
import { RunsPanel } from './RunsPanel'
import { placeNewBlock } from './placement'
import { CommentCounts, CommentCountsContext } from './commentCounts'
import { isPanelEvent, useDemo } from './nav'

type SideTab = 'block' | 'comments' | 'versions' | 'triggers' | 'history'
const TABS: [SideTab, string][] = [
  ['block', 'Block & run'],
  ['comments', 'Comments'],
  ['versions', 'Versions'],
  ['triggers', 'Triggers'],
  ['history', 'History'],
]

export function App({ client, workflowId, seed }: { client: ResonantClient; workflowId: string; seed: boolean }) {
  const { rest } = useDemo()
  const [commentCounts] = useState(() => new CommentCounts(rest, workflowId))
  return (
    <ResonantProvider client={client}>
      <RoomProvider workflowId={workflowId} fallback={<div className="boot">Connecting…</div>}>
        <ReactFlowProvider>
          <CommentCountsContext.Provider value={commentCounts}>
            <Editor seed={seed} workflowId={workflowId} />
          </CommentCountsContext.Provider>
        </ReactFlowProvider>
      </RoomProvider>
    </ResonantProvider>
  )
}

/** Seeds a new workflow with input → ai → output, once, after the stored document arrived. */
function useSeed(seed: boolean) {
  const room = useRoom()
  useEffect(() => {
    if (!seed) return
    let cancelled = false
    room.whenSynced().then(() => {
      const wf = room.workflow
      if (cancelled || wf.blocks().length > 0) return
      wf.transact(() => {
        wf.addBlock({ id: 'input', type: 'input', position: { x: 40, y: 120 }, data: { label: 'Topic' } })
        wf.addBlock({
          id: 'ai',
          type: 'ai',
          position: { x: 340, y: 100 },
          data: { label: 'Write a line' },
          config: { userPromptTemplate: 'Write one line about {{ input.topic }}' },
        })
        wf.addBlock({ id: 'output', type: 'output', position: { x: 680, y: 120 }, data: { label: 'Result' } })
        wf.connect({ source: 'input', target: 'ai' })
        wf.connect({ source: 'ai', target: 'output' })
      })
      // The seed is not the user's change to undo.
      room.undo.clear()
    }, () => {
      // The room stopped (its error is on screen): nothing to seed.
    })
    return () => {
      cancelled = true
    }
  }, [room, seed])
}

function useUndoShortcuts() {
  const { undo, redo } = useUndoRedo()
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement | null
      if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return
      if (!(e.ctrlKey || e.metaKey)) return
      const k = e.key.toLowerCase()
      if (k === 'z' && !e.shiftKey) undo()
      else if ((k === 'z' && e.shiftKey) || k === 'y') redo()
      else return
      e.preventDefault()
    }
    window.addEventListener('keydown', onKey)
    return () => window.removeEventListener('keydown', onKey)
  }, [undo, redo])
}

function Editor({ seed, workflowId }: { seed: boolean; workflowId: string }) {
  const room = useRoom()
  // Rendered from the first load on, through disconnects: the canvas (and the selection, and
  // the inspector's draft) stay while the socket reconnects, and offline edits are visible.
  const loaded = useLoaded()
  const synced = useSynced()
  const error = useRoomError()
  const execution = useLatestExecution()
  const [selected, setSelected] = useState<string[]>([])
  const [tab, setTab] = useState<SideTab>('block')
  const commentCounts = useContext(CommentCountsContext)!
  const refreshCounts = useCallback(() => void commentCounts.refresh().catch(() => {}), [commentCounts])
  useEffect(() => {
    const load = () => commentCounts.refresh().catch((e: unknown) => console.warn('comment counts', e))
    void load()
    // Editors announce comment changes (CommentsPanel); REST-only writers do not: look again
    // now and then.
    const t = setInterval(load, 30_000)
    return () => clearInterval(t)
  }, [commentCounts])
  useEventListener((e) => {
    if (isPanelEvent(e, 'comments-changed')) refreshCounts()
  })
  const canvas = useRef<HTMLDivElement>(null)

  useEffect(() => {
    if (window.__resonant) window.__resonant.room = room
  }, [room])
  useSeed(seed)
  useUndoShortcuts()

  return (
    <ExecutionContext.Provider value={execution}>
      <div className="app">
        <header className="topbar">
          <WorkflowHeader workflowId={workflowId} />
          <History selected={selected} />
          <StatusBar />
        </header>
        <div className="main">
          <Palette canvas={canvas} />
          <div className="canvas" ref={canvas}>
            <Guard what="canvas">
            {error?.fatal ? (
              <div className="boot error" data-testid="room-error-page" data-code={error.code}>
                {error.message}
              </div>
            ) : loaded ? (
              <ResonantFlow
                nodeTypes={nodeTypes}
                onBlockSelectionChange={setSelected}
                deleteKeyCode={['Backspace', 'Delete']}
                // Large workflows: mount only what is on screen (1300 blocks render in a
                // fraction of the time; see the closing note's load measurement).
                onlyRenderVisibleElements
                minZoom={0.2}
                maxZoom={2}
                // The whole workflow in view when it opens (a new one is seeded after the
                // first render, and React Flow fits once its nodes are measured).
                fitView
                fitViewOptions={{ padding: 0.25, maxZoom: 1 }}
              >
                <Background gap={16} />
                <Controls showInteractive={false} />
                <MiniMap pannable zoomable />
              </ResonantFlow>
            ) : (
              <div className="boot">Loading the workflow…</div>
            )}
            {loaded && !synced && !error?.fatal && (
              <div className="banner" data-testid="reconnecting-banner" role="status">
                Reconnecting… you can keep editing; changes are sent when the connection is back.
              </div>
            )}
            </Guard>
          </div>
          <aside className="side">
            <nav className="tabs" role="tablist">
              {TABS.map(([t, label]) => (
                <button
                  key={t}
                  role="tab"
                  aria-selected={tab === t}
                  className={tab === t ? 'active' : undefined}
                  data-testid={`tab-${t}`}
                  onClick={() => setTab(t)}
                >
                  {label}
                </button>
              ))}
            </nav>
            <Guard what="side panel">
              {tab === 'block' && (
                <>
                  <Inspector blockId={selected.length === 1 ? selected[0] : undefined} count={selected.length} />
                  <RunControls />
                  <RunLog />
                </>
              )}
              {tab === 'comments' && (
                <CommentsPanel
                  workflowId={workflowId}
                  blockId={selected.length === 1 ? selected[0] : undefined}
                  onChanged={refreshCounts}
                />
              )}
              {tab === 'versions' && <VersionsPanel workflowId={workflowId} />}
              {tab === 'triggers' && <TriggersPanel workflowId={workflowId} />}
              {tab === 'history' && <RunsPanel workflowId={workflowId} />}
            </Guard>
          </aside>
        </div>
      </div>
    </ExecutionContext.Provider>
  )
}

/** The blocks to add, in a column beside the canvas; each lands in the middle of what I look at. */
function Palette({ canvas }: { canvas: React.RefObject<HTMLDivElement | null> }) {
  const room = useRoom()
  const { screenToFlowPosition } = useReactFlow()
  const loaded = useLoaded()
  const error = useRoomError()
  // Before the stored document arrived, a new block would land in an empty document nobody
  // sees; after a fatal error, nothing can be saved.
  const editable = loaded && !error?.fatal

  const add = useCallback(
    (type: BlockType) => {
      const rect = canvas.current?.getBoundingClientRect()
      const center = rect
        ? screenToFlowPosition({ x: rect.left + rect.width / 2, y: rect.top + rect.height / 2 })
        : { x: 0, y: 0 }
      room.workflow.addBlock({ type, position: placeNewBlock(center, room.workflow.blocks()) })
    },
    [room, canvas, screenToFlowPosition],
  )

  return (
    <div className="palette" data-testid="palette">
      <div className="palette-title">Add block</div>
      {BLOCK_TYPES.map((t) => (
        <button
          key={t}
          data-testid={`add-block-${t}`}
          title={blockSchema.types[t]?.description ?? t}
          disabled={!editable}
          onClick={() => add(t)}
        >
          {blockSchema.types[t]?.label ?? t}
        </button>
      ))}
    </div>
  )
}

function History({ selected }: { selected: string[] }) {
  const room = useRoom()
  const { undo, redo, canUndo, canRedo } = useUndoRedo()
  return (
    <div className="history">
      <button data-testid="undo" onClick={undo} disabled={!canUndo} title="Undo (Ctrl+Z)">
        Undo
      </button>
      <button data-testid="redo" onClick={redo} disabled={!canRedo} title="Redo (Ctrl+Shift+Z)">
        Redo
      </button>
      <button
        data-testid="delete-block"
        onClick={() => room.workflow.removeBlocks(selected)}
        disabled={selected.length === 0}
        title="Delete the selected blocks (Delete)"
      >
        Delete
      </button>
    </div>
  )
}

/**
 * Keeps one part of the editor failing (say, on a block another client wrote badly) from
 * taking the whole page down; Retry renders it again.
 */
class Guard extends Component<{ what: string; children: ReactNode }, { error: Error | null }> {
  state = { error: null as Error | null }
  static getDerivedStateFromError(error: Error) {
    return { error }
  }
  componentDidCatch(error: Error) {
    console.error(`the ${this.props.what} failed`, error)
  }
  render() {
    if (!this.state.error) return this.props.children
    return (
      <div className="boot error" data-testid="part-error">
        The {this.props.what} failed: {this.state.error.message}{' '}
        <button onClick={() => this.setState({ error: null })}>Retry</button>
      </div>
    )
  }
}
