/** `@resonant/react`: the provider, hooks and the React Flow binding (`useFlow`, `ResonantFlow`). */
export * from './core.js'
export {
  useFlow,
  ResonantFlow,
  RemoteCursors,
  CursorTracker,
  type BlockNode,
  type BlockNodeData,
  type ConnectionEdge,
  type ConnectionEdgeData,
  type FlowBinding,
  type UseFlowOptions,
  type ResonantFlowProps,
  type RemoteCursorsProps,
} from './flow.js'
export { FlowModel, selectRemote, type LocalNodeState, type RemoteInfo, type NodeChangeResult } from './flow-model.js'
