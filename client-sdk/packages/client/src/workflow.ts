import * as Y from 'yjs'
import { specOf } from './schema.js'
import { isTextField, setTextField, watchTextMigrations, type FieldPart } from './text.js'
import type {
  Block,
  BlockType,
  Connection,
  FlowPoint,
  NewBlock,
  Unsubscribe,
  Viewport,
} from './types.js'

/** What changed in one document transaction, as {@link WorkflowDoc.observe} reports it. */
export interface WorkflowChange {
  blocks: boolean
  connections: boolean
  viewport: boolean
  meta: boolean
  /** Blocks whose content changed (additions and removals set only `blocks`). */
  blockIds: Set<string>
}

/** A patch of one block: `data` and `config` keys are merged; a key set to undefined is deleted. */
export interface BlockPatch {
  data?: Record<string, unknown>
  config?: Record<string, unknown>
  type?: BlockType
}

const DEFAULT_VIEWPORT: Viewport = { x: 0, y: 0, zoom: 1 }

/**
 * Typed access to a workflow document: blocks and connections are `Y.Map`s in `Y.Array`s,
 * `viewport` and `meta` are maps (docs/workflow-schema.md). Every mutation is one transaction
 * with the room's local origin, so it is one undo step and one update on the wire.
 */
export class WorkflowDoc {
  /** The `blocks` array. */
  readonly blocksArray: Y.Array<Y.Map<unknown>>
  /** The `connections` array. */
  readonly connectionsArray: Y.Array<Y.Map<unknown>>
  /** The `viewport` map. */
  readonly viewportMap: Y.Map<unknown>
  /** The `meta` map. */
  readonly metaMap: Y.Map<unknown>
  // Keyed by the block's map, so a block deleted and re-created under the same id is re-read.
  private blockCache = new WeakMap<Y.Map<unknown>, Block>()
  private blockList: Block[] | null = null
  private connectionList: Connection[] | null = null
  private viewportValue: Viewport | null = null
  private metaValue: Record<string, unknown> | null = null
  private listeners = new Set<(c: WorkflowChange) => void>()

  constructor(
    readonly doc: Y.Doc,
    /** Transaction origin of this user's edits (tracked by undo). */
    readonly origin: object,
    /** Transaction origin of edits that must not be undone (the viewport). */
    readonly untrackedOrigin: object,
  ) {
    this.blocksArray = doc.getArray('blocks')
    this.connectionsArray = doc.getArray('connections')
    this.viewportMap = doc.getMap('viewport')
    this.metaMap = doc.getMap('meta')
    doc.on('afterTransaction', (txn: Y.Transaction) => this.afterTransaction(txn))
    watchTextMigrations(doc, origin)
  }

  private afterTransaction(txn: Y.Transaction) {
    const change: WorkflowChange = {
      blocks: false,
      connections: false,
      viewport: false,
      meta: false,
      blockIds: new Set(),
    }
    for (const type of txn.changedParentTypes.keys()) {
      let t: Y.AbstractType<unknown> | null = type as Y.AbstractType<unknown>
      // Walk up to the top-level type; remember the block map on the way.
      let child: Y.AbstractType<unknown> | null = null
      while (t && t._item !== null) {
        child = t
        t = t.parent as Y.AbstractType<unknown> | null
      }
      if (t === this.blocksArray) {
        change.blocks = true
        if (child instanceof Y.Map) {
          this.blockCache.delete(child)
          const id = child.get('id')
          if (typeof id === 'string') change.blockIds.add(id)
        }
      } else if (t === this.connectionsArray) change.connections = true
      else if (t === this.viewportMap) change.viewport = true
      else if (t === this.metaMap) change.meta = true
    }
    if (!(change.blocks || change.connections || change.viewport || change.meta)) return
    if (change.blocks) this.blockList = null
    if (change.connections) this.connectionList = null
    if (change.viewport) this.viewportValue = null
    if (change.meta) this.metaValue = null
    for (const l of [...this.listeners]) l(change)
  }

  /** Calls `cb` after every transaction that changed the workflow. */
  observe(cb: (change: WorkflowChange) => void): Unsubscribe {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }

  /** Every block; the same array (and the same object per unchanged block) until something changes. */
  blocks(): Block[] {
    if (this.blockList) return this.blockList
    const list: Block[] = []
    for (const m of this.blocksArray) {
      if (!(m instanceof Y.Map)) continue
      const id = m.get('id')
      if (typeof id !== 'string') continue
      let b = this.blockCache.get(m)
      if (!b) {
        b = readBlock(m)
        this.blockCache.set(m, b)
      }
      list.push(b)
    }
    this.blockList = list
    return list
  }

  /** One block by id. */
  block(id: string): Block | undefined {
    // From the array (not the list cached per transaction), so it is right inside `transact`.
    const i = this.indexOf(id)
    if (i < 0) return undefined
    const m = this.blocksArray.get(i)
    let b = this.blockCache.get(m)
    if (!b) {
      b = readBlock(m)
      this.blockCache.set(m, b)
    }
    return b
  }

  /** Every connection; the same array until something changes. */
  connections(): Connection[] {
    if (!this.connectionList) {
      this.connectionList = this.connectionsArray
        .toArray()
        .filter((m): m is Y.Map<unknown> => m instanceof Y.Map)
        .map((m) => m.toJSON() as Connection)
        .filter((c) => typeof c.id === 'string' && typeof c.source === 'string' && typeof c.target === 'string')
    }
    return this.connectionList
  }

  /** The shared viewport. */
  viewport(): Viewport {
    if (!this.viewportValue) {
      const v = this.viewportMap.toJSON() as Partial<Viewport>
      this.viewportValue = {
        x: num(v.x, DEFAULT_VIEWPORT.x),
        y: num(v.y, DEFAULT_VIEWPORT.y),
        zoom: num(v.zoom, DEFAULT_VIEWPORT.zoom),
      }
    }
    return this.viewportValue
  }

  /** The `meta` map as JSON. */
  meta(): Record<string, unknown> {
    if (!this.metaValue) this.metaValue = this.metaMap.toJSON()
    return this.metaValue
  }

  /** Runs `fn` as one transaction: one undo step, one update on the wire. */
  transact(fn: () => void) {
    this.doc.transact(fn, this.origin)
  }

  /** Adds a block; returns its id. Required config fields start from the schema's example. */
  addBlock(b: NewBlock): string {
    const spec = specOf(b.type)
    if (!spec) throw new Error(`unknown block type ${JSON.stringify(b.type)}`)
    const id = b.id ?? newId(b.type)
    checkId(id)
    if (this.indexOf(id) >= 0) throw new Error(`a block with id ${JSON.stringify(id)} exists`)
    const config: Record<string, unknown> = {}
    for (const [name, field] of Object.entries(spec.fields)) {
      if (field.required && spec.example[name] !== undefined) config[name] = clone(spec.example[name])
    }
    Object.assign(config, b.config ?? {})
    const m = new Y.Map<unknown>()
    m.set('id', id)
    m.set('type', b.type)
    m.set('position', { x: b.position.x, y: b.position.y })
    m.set('data', toYMap({ label: spec.label, ...(b.data ?? {}) }, (k) => isTextField(b.type, 'data', k)))
    m.set('config', toYMap(config, (k) => isTextField(b.type, 'config', k)))
    this.transact(() => this.blocksArray.push([m]))
    return id
  }

  /** Merges a patch into one block. */
  updateBlock(id: string, patch: BlockPatch) {
    const m = this.mapOf(id)
    this.transact(() => {
      if (patch.type !== undefined) {
        if (!specOf(patch.type)) throw new Error(`unknown block type ${patch.type}`)
        m.set('type', patch.type)
      }
      if (patch.data) mergeInto(m, 'data', patch.data)
      if (patch.config) mergeInto(m, 'config', patch.config)
    })
  }

  /**
   * The `Y.Text` of a text field (see `isTextField`), for binding an editor to it; undefined
   * while the field holds a plain string (migrated on its first edit) or nothing.
   */
  textOf(blockId: string, part: FieldPart, field: string): Y.Text | undefined {
    const i = this.indexOf(blockId)
    const fields = i < 0 ? undefined : this.blocksArray.get(i).get(part)
    const v = fields instanceof Y.Map ? fields.get(field) : undefined
    return v instanceof Y.Text ? v : undefined
  }

  /**
   * Sets a text field to `value` as a diff into its `Y.Text` (migrating a plain string first),
   * one transaction; `caret` (the caret in `value`) disambiguates where the edit happened.
   */
  setText(blockId: string, part: FieldPart, field: string, value: string, caret?: number) {
    const m = this.mapOf(blockId)
    this.transact(() => {
      let fields = m.get(part)
      if (!(fields instanceof Y.Map)) {
        fields = toYMap(isObject(fields) ? (fields as Record<string, unknown>) : {})
        m.set(part, fields)
      }
      setTextField(fields as Y.Map<unknown>, field, value, caret)
    })
  }

  /** Moves one block (a drag lands here once, on drop). */
  moveBlock(id: string, position: FlowPoint) {
    const m = this.mapOf(id)
    this.transact(() => m.set('position', { x: position.x, y: position.y }))
  }

  /** Removes a block and every connection touching it, in one transaction. */
  removeBlock(id: string) {
    this.removeBlocks([id])
  }

  /** Removes blocks and every connection touching them, in one transaction. */
  removeBlocks(ids: string[]) {
    const gone = new Set(ids)
    this.transact(() => {
      deleteWhere(this.connectionsArray, (c) => gone.has(c.get('source') as string) || gone.has(c.get('target') as string))
      deleteWhere(this.blocksArray, (b) => gone.has(b.get('id') as string))
    })
  }

  /** Adds a connection; null when it would duplicate one, loop on itself, or name a missing block. */
  connect(c: Omit<Connection, 'id'> & { id?: string }): string | null {
    if (c.source === c.target) return null
    if (this.indexOf(c.source) < 0 || this.indexOf(c.target) < 0) return null
    const sh = c.sourceHandle ?? null
    const th = c.targetHandle ?? null
    // Read the array itself, not the cached list: inside `transact` the cache does not yet
    // show connections added earlier in the same transaction.
    let dup = false
    let taken = false
    const id = c.id ?? `e-${c.source}${sh ? `.${sh}` : ''}-${c.target}${th ? `.${th}` : ''}`
    for (const x of this.connectionsArray) {
      if (!(x instanceof Y.Map)) continue
      if (x.get('id') === id) taken = true
      if (
        x.get('source') === c.source &&
        x.get('target') === c.target &&
        (x.get('sourceHandle') ?? null) === sh &&
        (x.get('targetHandle') ?? null) === th
      ) {
        dup = true
        break
      }
    }
    if (dup) return null
    const m = new Y.Map<unknown>()
    m.set('id', taken ? `${id}-${rand()}` : id)
    m.set('source', c.source)
    m.set('target', c.target)
    if (sh !== null) m.set('sourceHandle', sh)
    if (th !== null) m.set('targetHandle', th)
    this.transact(() => this.connectionsArray.push([m]))
    return m.get('id') as string
  }

  /** Removes connections by id. */
  disconnect(...ids: string[]) {
    const gone = new Set(ids)
    this.transact(() => deleteWhere(this.connectionsArray, (c) => gone.has(c.get('id') as string)))
  }

  /** Sets the shared viewport; never an undo step. */
  setViewport(v: Viewport) {
    this.doc.transact(() => {
      this.viewportMap.set('x', v.x)
      this.viewportMap.set('y', v.y)
      this.viewportMap.set('zoom', v.zoom)
    }, this.untrackedOrigin)
  }

  /** Sets one `meta` key (undefined deletes it). */
  setMeta(key: string, value: unknown) {
    this.transact(() => (value === undefined ? this.metaMap.delete(key) : this.metaMap.set(key, value)))
  }

  private indexOf(id: string): number {
    let i = 0
    for (const m of this.blocksArray) {
      if (m instanceof Y.Map && m.get('id') === id) return i
      i++
    }
    return -1
  }

  private mapOf(id: string): Y.Map<unknown> {
    const i = this.indexOf(id)
    if (i < 0) throw new Error(`no block ${JSON.stringify(id)}`)
    return this.blocksArray.get(i)
  }
}

function readBlock(m: Y.Map<unknown>): Block {
  const j = m.toJSON() as Partial<Block>
  const p = (j.position ?? {}) as Partial<FlowPoint>
  return {
    id: j.id as string,
    type: j.type as BlockType,
    position: { x: num(p.x, 0), y: num(p.y, 0) },
    data: isObject(j.data) ? (j.data as Block['data']) : {},
    config: isObject(j.config) ? (j.config as Block['config']) : {},
  }
}

/** Merges keys into a nested map; a plain object written by another client becomes a map. */
function mergeInto(m: Y.Map<unknown>, key: FieldPart, patch: Record<string, unknown>) {
  let target = m.get(key)
  if (!(target instanceof Y.Map)) {
    const current = isObject(target) ? (target as Record<string, unknown>) : {}
    target = toYMap(current)
    m.set(key, target)
  }
  const t = target as Y.Map<unknown>
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) t.delete(k)
    // Text fields change as a diff, so concurrent typing merges (text.ts).
    else if (typeof v === 'string' && isTextField(m.get('type'), key, k)) setTextField(t, k, v)
    else if (JSON.stringify(t.get(k)) !== JSON.stringify(v)) t.set(k, clone(v))
  }
}

function toYMap(obj: Record<string, unknown>, isText?: (key: string) => boolean): Y.Map<unknown> {
  const m = new Y.Map<unknown>()
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue
    m.set(k, typeof v === 'string' && isText?.(k) ? new Y.Text(v) : clone(v))
  }
  return m
}

function deleteWhere(arr: Y.Array<Y.Map<unknown>>, pred: (m: Y.Map<unknown>) => boolean) {
  // Backwards, so earlier indexes stay valid while deleting.
  for (let i = arr.length - 1; i >= 0; i--) {
    const m = arr.get(i)
    if (m instanceof Y.Map && pred(m)) arr.delete(i, 1)
  }
}

function checkId(id: string) {
  if (!id || /[/[\]]/.test(id) || new TextEncoder().encode(id).length > 200) {
    throw new Error(`bad block id ${JSON.stringify(id)}: 1–200 bytes without '/', '[' or ']'`)
  }
}

function newId(type: string) {
  return `${type}-${rand()}`
}

function rand() {
  return Math.random().toString(36).slice(2, 8)
}

function num(v: unknown, d: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : d
}

function isObject(v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function clone<T>(v: T): T {
  return v === undefined ? v : JSON.parse(JSON.stringify(v))
}
