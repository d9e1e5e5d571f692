import { createContext, useContext, useSyncExternalStore } from 'react'
import type { RestClient } from '@resonant/client'

/**
 * Open comments per block, for the badges on the cards. A small store read per block id, so a
 * change re-renders only the cards whose count changed (the canvas can hold thousands).
 */
export class CommentCounts {
  private counts = new Map<string, number>()
  private listeners = new Set<() => void>()

  constructor(
    private readonly rest: RestClient,
    private readonly workflowId: string,
  ) {}

  subscribe = (f: () => void) => {
    this.listeners.add(f)
    return () => this.listeners.delete(f)
  }

  get(blockId: string): number {
    return this.counts.get(blockId) ?? 0
  }

  /** Reads every comment of the workflow again (after I changed one, and now and then). */
  async refresh(): Promise<void> {
    const next = new Map<string, number>()
    for await (const c of this.rest.all((cursor) => this.rest.comments.list(this.workflowId, { cursor, limit: 100 }))) {
      if (c.blockId && !c.resolved) next.set(c.blockId, (next.get(c.blockId) ?? 0) + 1)
    }
    this.counts = next
    for (const f of this.listeners) f()
  }
}

export const CommentCountsContext = createContext<CommentCounts | null>(null)

/** Open comments on a block (0 outside an editor). */
export function useCommentCount(blockId: string): number {
  const store = useContext(CommentCountsContext)
  const get = () => store?.get(blockId) ?? 0
  return useSyncExternalStore(store?.subscribe ?? noop, get, get)
}

const noop = () => () => {}
