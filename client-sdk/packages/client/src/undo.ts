import * as Y from 'yjs'
import type { WorkflowDoc } from './workflow.js'
import type { Unsubscribe } from './types.js'

/** Options of {@link UndoController}. */
export interface UndoOptions {
  /**
   * Consecutive edits of the same thing (one field, one block's position) less than this many
   * milliseconds apart are one undo step, so a typed word is one step, not one per key.
   * Default 500.
   */
  captureMs?: number
  /** The clock (milliseconds); tests pass their own. */
  now?: () => number
}

/**
 * Undo and redo of this user's changes only: a `Y.UndoManager` over blocks, connections and
 * meta that tracks the room's local origin, so remote edits and the viewport are never undone.
 * One user action (adding, removing, connecting, a drop ending a drag, `workflow.transact`) is
 * one step; edits of one field, or moves of one block, in a burst without a pause of
 * `captureMs` merge into one step.
 */
export class UndoController {
  /** The underlying manager. */
  readonly manager: Y.UndoManager
  private listeners = new Set<() => void>()
  private readonly captureMs: number
  private readonly now: () => number
  /** The key the next tracked transaction edits; undefined: not a helper (e.g. a text binding). */
  private pendingKey: string | null | undefined = undefined
  private lastKey: string | null = null
  private lastAt = -Infinity
  private offs: (() => void)[] = []

  constructor(workflow: WorkflowDoc, origin: object, options: UndoOptions = {}) {
    this.captureMs = options.captureMs ?? 500
    this.now = options.now ?? (() => Date.now())
    this.manager = new Y.UndoManager([workflow.blocksArray, workflow.connectionsArray, workflow.metaMap], {
      trackedOrigins: new Set([origin]),
      // Yjs merges while its own window is open; we close it ourselves (stopCapturing) when a
      // step must end, by our clock and by what is edited, so its window is never the limit.
      captureTimeout: Number.POSITIVE_INFINITY,
    })
    const changed = () => {
      for (const l of [...this.listeners]) l()
    }
    this.manager.on('stack-item-added', changed)
    this.manager.on('stack-item-popped', changed)
    this.manager.on('stack-cleared', changed)
    this.offs.push(workflow.onEditKey((key) => (this.pendingKey = key)))
    const before = (txn: Y.Transaction) => {
      if (txn.origin !== origin) return
      const key = this.pendingKey === undefined ? 'other' : this.pendingKey
      this.pendingKey = undefined
      const t = this.now()
      if (key === null || key !== this.lastKey || t - this.lastAt >= this.captureMs) this.manager.stopCapturing()
      this.lastKey = key
      this.lastAt = t
    }
    // A helper called inside an open transaction sets a key no transaction starts with.
    const after = () => (this.pendingKey = undefined)
    const doc = workflow.doc
    doc.on('beforeTransaction', before)
    doc.on('afterTransaction', after)
    this.offs.push(() => doc.off('beforeTransaction', before), () => doc.off('afterTransaction', after))
  }

  /** Undoes my last change. */
  undo() {
    this.manager.stopCapturing()
    this.manager.undo()
    this.lastKey = null
  }

  /** Redoes my last undone change. */
  redo() {
    this.manager.stopCapturing()
    this.manager.redo()
    this.lastKey = null
  }

  /** Whether there is something to undo. */
  get canUndo(): boolean {
    return this.manager.undoStack.length > 0
  }

  /** Whether there is something to redo. */
  get canRedo(): boolean {
    return this.manager.redoStack.length > 0
  }

  /** Calls `cb` when either stack changes. */
  onChange(cb: () => void): Unsubscribe {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }

  /** Forgets both stacks. */
  clear() {
    this.manager.clear()
  }

  /** Stops listening. */
  destroy() {
    for (const off of this.offs) off()
    this.manager.destroy()
  }
}
