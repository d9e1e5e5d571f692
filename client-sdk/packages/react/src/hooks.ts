import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react'
import type {
  Block,
  BroadcastSender,
  BlockRunState,
  Connection,
  ConnectionStatus,
  ExecutionHandle,
  ExecutionState,
  Peer,
  PresenceState,
  RoomError,
  RunOptions,
  SaveStatus,
  Unsubscribe,
  Viewport,
} from '@resonant/client'
import { useRoom } from './context.js'
import { roomStores, useSelectedStore, useSubscribe, type Equality } from './store.js'

/** The room's connection status. */
export function useStatus(): ConnectionStatus {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('status', cb), [room])
  return useSyncExternalStore(subscribe, () => room.status, () => room.status)
}

/** Whether the server has stored every local change. */
export function useSaveStatus(): SaveStatus {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('save', cb), [room])
  return useSyncExternalStore(subscribe, () => room.saveStatus, () => room.saveStatus)
}

/** True once the room has received the stored document. */
export function useSynced(): boolean {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('synced', cb), [room])
  return useSyncExternalStore(subscribe, () => room.synced, () => room.synced)
}

/**
 * True once the room first had the server's state (or its copy stored in this browser, see the
 * `offline` option), and from then on through disconnects
 * (sticky): render the editor when this is true, not only while `synced`, so it stays usable
 * offline.
 */
export function useLoaded(): boolean {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('loaded', cb), [room])
  return useSyncExternalStore(subscribe, () => room.loaded, () => room.loaded)
}

/** Whether the server treats this connection as read-only (a viewer): hide or disable editing. */
export function useReadOnly(): boolean {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('status', cb), [room])
  return useSyncExternalStore(subscribe, () => room.readOnly, () => room.readOnly)
}

/** A stable function that broadcasts an ephemeral event to the room's other editors (`Room.broadcast`). */
export function useBroadcastEvent(): (event: unknown) => boolean {
  const room = useRoom()
  return useCallback((event: unknown) => room.broadcast(event), [room])
}

/**
 * Calls `listener` with every event another editor broadcasts. The latest `listener` is
 * called (no need to memoise it); subscribing happens once per room.
 */
export function useEventListener(listener: (event: unknown, from: BroadcastSender) => void) {
  const room = useRoom()
  const latest = useRef(listener)
  latest.current = listener
  useEffect(() => room.onBroadcast((event, from) => latest.current(event, from)), [room])
}

/** Why the room stopped for good (`fatal`), or cannot connect right now; null when fine. */
export function useRoomError(): RoomError | null {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.on('error', cb), [room])
  return useSyncExternalStore(subscribe, () => room.error, () => room.error)
}

/**
 * The document's blocks. Each block keeps its object identity while its content is
 * unchanged (so `React.memo` works); the array keeps its identity while no block changed.
 * With a selector, the component re-renders only when the selection changes (`isEqual`,
 * default `Object.is`).
 */
export function useBlocks(): Block[]
export function useBlocks<T>(selector: (blocks: Block[]) => T, isEqual?: Equality<T>): T
export function useBlocks<T>(selector?: (blocks: Block[]) => T, isEqual?: Equality<T>): T | Block[] {
  const room = useRoom()
  const { doc } = roomStores(room)
  return useSelectedStore(doc.blocks.subscribe, doc.getBlocks, selector, isEqual)
}

/** One block (stable object while unchanged), or undefined. */
export function useBlock(id: string): Block | undefined {
  const room = useRoom()
  const { doc } = roomStores(room)
  const get = useCallback(() => doc.getBlock(id), [doc, id])
  return useSyncExternalStore(doc.blocks.subscribe, get, get)
}

/** The document's connections (stable objects, like {@link useBlocks}). */
export function useConnections(): Connection[]
export function useConnections<T>(selector: (c: Connection[]) => T, isEqual?: Equality<T>): T
export function useConnections<T>(selector?: (c: Connection[]) => T, isEqual?: Equality<T>): T | Connection[] {
  const room = useRoom()
  const { doc } = roomStores(room)
  return useSelectedStore(doc.connections.subscribe, doc.getConnections, selector, isEqual)
}

/** The viewport stored in the document. */
export function useViewport(): Viewport {
  const room = useRoom()
  const { doc } = roomStores(room)
  return useSyncExternalStore(doc.viewport.subscribe, doc.getViewport, doc.getViewport)
}

/** The document's `meta` map. */
export function useMeta(): Record<string, unknown> {
  const room = useRoom()
  const { doc } = roomStores(room)
  return useSyncExternalStore(doc.meta.subscribe, doc.getMeta, doc.getMeta)
}

/** My presence and its (throttled) update function. */
export function useMyPresence(): [PresenceState, (patch: Partial<Omit<PresenceState, 'user'>>) => void] {
  const room = useRoom()
  const { me } = roomStores(room)
  const state = useSyncExternalStore(me.changes.subscribe, me.get, me.get)
  return [state, me.update]
}

/** The other editors in the room (optionally a selection of them). */
export function useOthers(): Peer[]
export function useOthers<T>(selector: (others: Peer[]) => T, isEqual?: Equality<T>): T
export function useOthers<T>(selector?: (others: Peer[]) => T, isEqual?: Equality<T>): T | Peer[] {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.presence.subscribe(() => cb()), [room])
  const get = useCallback(() => room.presence.others(), [room])
  return useSelectedStore(subscribe, get, selector, isEqual)
}

export interface UndoRedo {
  undo: () => void
  redo: () => void
  canUndo: boolean
  canRedo: boolean
}

/** Undo and redo of my own changes. */
export function useUndoRedo(): UndoRedo {
  const room = useRoom()
  const subscribe = useSubscribe((cb) => room.undo.onChange(cb), [room])
  const get = useCallback(() => (room.undo.canUndo ? 1 : 0) | (room.undo.canRedo ? 2 : 0), [room])
  const flags = useSyncExternalStore(subscribe, get, get)
  const undo = useCallback(() => room.undo.undo(), [room])
  const redo = useCallback(() => room.undo.redo(), [room])
  return useMemo(() => ({ undo, redo, canUndo: (flags & 1) !== 0, canRedo: (flags & 2) !== 0 }), [undo, redo, flags])
}

export interface RunWorkflow {
  /** Starts an execution; resolves to its handle, or null when the server refused (see `error`). */
  run: (opts?: RunOptions) => Promise<ExecutionHandle | null>
  /** True from `run()` until the started execution has finished (or the start failed). */
  running: boolean
  /** True while the start request is pending. */
  starting: boolean
  /** The last refusal (a `ResonantError`, code `invalid-workflow` with `details.problems`), cleared by the next run. */
  error: Error | null
  /** The last execution started here. */
  execution: ExecutionHandle | null
}

/** Start executions of the room's workflow. */
export function useRunWorkflow(): RunWorkflow {
  const room = useRoom()
  const [starting, setStarting] = useState(false)
  const [error, setError] = useState<Error | null>(null)
  const [execution, setExecution] = useState<ExecutionHandle | null>(null)
  const [finished, setFinished] = useState<ExecutionHandle | null>(null)
  const alive = useRef(true)
  useEffect(() => {
    alive.current = true
    return () => {
      alive.current = false
    }
  }, [])
  const run = useCallback(
    async (opts?: RunOptions) => {
      setStarting(true)
      setError(null)
      try {
        const handle = await room.run(opts)
        if (alive.current) setExecution(handle)
        handle.done.then(
          () => alive.current && setFinished(handle),
          () => alive.current && setFinished(handle),
        )
        return handle
      } catch (e) {
        if (alive.current) setError(e instanceof Error ? e : new Error(String(e)))
        return null
      } finally {
        if (alive.current) setStarting(false)
      }
    },
    [room],
  )
  const running = starting || (execution !== null && finished !== execution)
  return { run, running, starting, error, execution }
}

function useHandle(handleOrId: ExecutionHandle | string | null | undefined): ExecutionHandle | undefined {
  const room = useRoom()
  return useMemo(() => {
    if (!handleOrId) return undefined
    if (typeof handleOrId !== 'string') return handleOrId
    return room.executions().find((e) => e.id === handleOrId) ?? room.attach(handleOrId)
  }, [room, handleOrId])
}

/** An execution's live state (by handle, or by id: attached when this room does not know it yet). */
export function useExecution(handleOrId: ExecutionHandle | string | null | undefined): ExecutionState | undefined {
  const handle = useHandle(handleOrId)
  const subscribe = useSubscribe((cb): Unsubscribe => (handle ? handle.subscribe(() => cb()) : () => {}), [handle])
  const get = useCallback(() => handle?.state(), [handle])
  return useSyncExternalStore(subscribe, get, get)
}

/** Every execution this room knows (started here, by others live, or replayed), newest last. */
export function useExecutions(): ExecutionHandle[] {
  const room = useRoom()
  const snap = useRef<ExecutionHandle[]>([])
  const subscribe = useSubscribe((cb) => room.onExecutions(cb), [room])
  const get = useCallback(() => {
    const next = room.executions()
    const prev = snap.current
    if (next === prev) return prev
    if (next.length === prev.length && next.every((h, i) => h === prev[i])) return prev
    snap.current = next
    return next
  }, [room])
  return useSyncExternalStore(subscribe, get, get)
}

/** The newest execution of this room, or undefined. */
export function useLatestExecution(): ExecutionHandle | undefined {
  const all = useExecutions()
  return all[all.length - 1]
}

/** One block's state in an execution (`blockId` may be a loop key such as `each[2]/up`). */
export function useBlockExecution(handle: ExecutionHandle | null | undefined, blockId: string): BlockRunState | undefined {
  const subscribe = useSubscribe(
    (cb): Unsubscribe => (handle ? handle.subscribe(() => cb()) : () => {}),
    [handle],
  )
  const get = useCallback(() => handle?.state().blocks[blockId], [handle, blockId])
  return useSyncExternalStore(subscribe, get, get)
}
