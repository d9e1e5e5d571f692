import { createContext, useContext } from 'react'
import type { BlockType, ExecutionHandle } from '@resonant/client'

/** The execution the canvas shows (the newest one in the room). */
export const ExecutionContext = createContext<ExecutionHandle | undefined>(undefined)
export const useCurrentExecution = () => useContext(ExecutionContext)

export const BLOCK_TYPES: BlockType[] = [
  'input',
  'ai',
  'output',
  'condition',
  'transform',
  'loop',
  'merge',
  'split',
  'human',
  'webhook',
  'delay',
]

/** Render counts, read by the browser tests (a remote cursor must not re-render the blocks). */
export const renderStats = { nodes: 0 }
