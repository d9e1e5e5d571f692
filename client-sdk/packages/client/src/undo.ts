import * as Y from 'yjs'
import type { WorkflowDoc } from './workflow.js'
import type { Unsubscribe } from './types.js'

/**
 * Undo and redo of this user's changes only: a `Y.UndoManager` over blocks, connections and
 * meta that tracks the room's local origin, so remote edits and the viewport are never undone.
 * Each helper call (one user action, e.g. a drop ending a drag) is one step.
 */
export class UndoController {
  /** The underlying manager. */
  readonly manager: Y.UndoManager
  private listeners = new Set<() => void>()

  constructor(workflow: WorkflowDoc, origin: object) {
    this.manager = new Y.UndoManager([workflow.blocksArray, workflow.connectionsArray, workflow.metaMap], {
      trackedOrigins: new Set([origin]),
      // Every transaction is its own step; group with `workflow.transact`.
      captureTimeout: 0,
    })
    const changed = () => {
      for (const l of [...this.listeners]) l()
    }
    this.manager.on('stack-item-added', changed)
    this.manager.on('stack-item-popped', changed)
    this.manager.on('stack-cleared', changed)
  }

  /** Undoes my last change. */
  undo() {
    this.manager.undo()
  }

  /** Redoes my last undone change. */
  redo() {
    this.manager.redo()
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
    this.manager.destroy()
  }
}
