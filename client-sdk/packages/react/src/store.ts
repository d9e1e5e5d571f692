import { useCallback, useRef, useSyncExternalStore } from 'react'
import type { Block, Connection, PresenceState, Room, Unsubscribe, Viewport } from '@resonant/client'

/** Equality used by selector hooks; `Object.is` when none is given. */
export type Equality<T> = (a: T, b: T) => boolean

/** Shallow equality of arrays and plain objects (one level deep), `Object.is` otherwise. */
export function shallowEqual<T>(a: T, b: T): boolean {
  if (Object.is(a, b)) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a) as (keyof T)[]
  const kb = Object.keys(b)
  if (ka.length !== kb.length) return false
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k) || !Object.is(a[k], b[k])) return false
  }
  return true
}

/** Deep equality through JSON (for small plain values). */
export function jsonEqual<T>(a: T, b: T): boolean {
  return Object.is(a, b) || JSON.stringify(a) === JSON.stringify(b)
}

/**
 * useSyncExternalStore with an optional selector and equality: the selected value is
 * recomputed only when the snapshot or the selector changes, and the previous selection is
 * returned when `isEqual` says the new one is equal (so consumers do not re-render).
 */
export function useSelectedStore<S, T = S>(
  subscribe: (cb: () => void) => Unsubscribe,
  getSnapshot: () => S,
  selector?: (s: S) => T,
  isEqual?: Equality<T>,
): T {
  const memo = useRef<{ base: S; selector: unknown; value: T } | null>(null)
  const get = (): T => {
    const base = getSnapshot()
    const m = memo.current
    if (m && Object.is(m.base, base) && m.selector === selector) return m.value
    const next = selector ? selector(base) : (base as unknown as T)
    if (m && isEqual && isEqual(m.value, next)) {
      memo.current = { base, selector, value: m.value }
      return m.value
    }
    memo.current = { base, selector, value: next }
    return next
  }
  return useSyncExternalStore(subscribe, get, get)
}

/** A tiny observable value with listeners. */
class Emitter {
  private listeners = new Set<() => void>()
  subscribe = (cb: () => void): Unsubscribe => {
    this.listeners.add(cb)
    return () => {
      this.listeners.delete(cb)
    }
  }
  emit() {
    for (const cb of [...this.listeners]) cb()
  }
}

/**
 * Per-room snapshots of the document with structural sharing: the client keeps one object per
 * unchanged block and connection and a new array only on change, so `React.memo` and
 * selectors see real changes only. Nothing here walks the workflow per edit: lookups go
 * through the client's id index.
 */
export class DocStore {
  private viewportDirty = true
  private metaDirty = true
  private viewportSnap: { json: string; value: Viewport } | null = null
  private metaSnap: { json: string; value: Record<string, unknown> } | null = null
  readonly blocks = new Emitter()
  readonly connections = new Emitter()
  readonly viewport = new Emitter()
  readonly meta = new Emitter()

  constructor(private readonly room: Room) {
    room.workflow.observe((changed) => {
      if (changed.blocks) this.blocks.emit()
      if (changed.connections) this.connections.emit()
      if (changed.viewport) {
        this.viewportDirty = true
        this.viewport.emit()
      }
      if (changed.meta) {
        this.metaDirty = true
        this.meta.emit()
      }
    })
  }

  getBlocks = (): Block[] => this.room.workflow.blocks()

  getBlock = (id: string): Block | undefined => this.room.workflow.block(id)

  getConnections = (): Connection[] => this.room.workflow.connections()

  getViewport = (): Viewport => {
    if (this.viewportDirty || !this.viewportSnap) {
      this.viewportDirty = false
      const value = this.room.workflow.viewport()
      const json = JSON.stringify(value)
      if (!this.viewportSnap || this.viewportSnap.json !== json) this.viewportSnap = { json, value }
    }
    return this.viewportSnap.value
  }

  getMeta = (): Record<string, unknown> => {
    if (this.metaDirty || !this.metaSnap) {
      this.metaDirty = false
      const value = this.room.workflow.meta()
      const json = JSON.stringify(value)
      if (!this.metaSnap || this.metaSnap.json !== json) this.metaSnap = { json, value }
    }
    return this.metaSnap.value
  }
}

/** My presence as a stable snapshot, notified on local changes. */
export class MyPresenceStore {
  private snap: { json: string; value: PresenceState } | null = null
  readonly changes = new Emitter()

  constructor(private readonly room: Room) {
    room.awareness.on('change', () => this.changes.emit())
  }

  get = (): PresenceState => {
    const value = this.room.presence.me()
    const json = JSON.stringify(value)
    if (!this.snap || this.snap.json !== json) this.snap = { json, value }
    return this.snap.value
  }

  update = (patch: Partial<Omit<PresenceState, 'user'>>) => {
    this.room.presence.update(patch)
    this.changes.emit()
  }
}

interface RoomStores {
  doc: DocStore
  me: MyPresenceStore
}

const stores = new WeakMap<Room, RoomStores>()

/** The shared snapshot stores of a room (created on first use, one per room). */
export function roomStores(room: Room): RoomStores {
  let s = stores.get(room)
  if (!s) {
    s = { doc: new DocStore(room), me: new MyPresenceStore(room) }
    stores.set(room, s)
  }
  return s
}

/** A `subscribe` function stable per dependency list. */
export function useSubscribe(fn: (cb: () => void) => Unsubscribe, deps: unknown[]) {
  return useCallback(fn, deps)
}
