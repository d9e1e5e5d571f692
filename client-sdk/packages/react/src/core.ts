/**
 * `@resonant/react/hooks`: the provider and hooks without the React Flow binding, for apps that
 * draw their own canvas (this entry point never imports `@xyflow/react`, an optional peer).
 */
export {
  ResonantProvider,
  RoomProvider,
  useClient,
  useRoom,
  useRoomOrNull,
  type ResonantProviderProps,
  type RoomProviderProps,
} from './context.js'
export {
  useStatus,
  useSaveStatus,
  useSynced,
  useLoaded,
  useRoomError,
  useReadOnly,
  useBroadcastEvent,
  useEventListener,
  useBlocks,
  useBlock,
  useConnections,
  useViewport,
  useMeta,
  useMyPresence,
  useOthers,
  useUndoRedo,
  useRunWorkflow,
  useExecution,
  useExecutions,
  useLatestExecution,
  useBlockExecution,
  type UndoRedo,
  type RunWorkflow,
} from './hooks.js'
export { shallowEqual, jsonEqual, useSelectedStore, type Equality } from './store.js'
