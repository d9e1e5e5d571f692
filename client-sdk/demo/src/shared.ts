import { createContext, useContext } from 'react'
import { blockTypes, type BlockType, type ExecutionHandle } from '@resonant/client'

/** The execution the canvas shows (the newest one in the room). */
export const ExecutionContext = createContext<ExecutionHandle | undefined>(undefined)
export const useCurrentExecution = () => useContext(ExecutionContext)

/** The toolbar's block types: the schema's, in its order (one list, checked against the server). */
export const BLOCK_TYPES: readonly BlockType[] = blockTypes

/** Render counts, read by the browser tests (a remote cursor must not re-render the blocks). */
export const renderStats = { nodes: 0 }
