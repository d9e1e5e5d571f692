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
  type FlowBinding,
  type UseFlowOptions,
  type ResonantFlowProps,
  type RemoteCursorsProps,
} from './flow.js'
