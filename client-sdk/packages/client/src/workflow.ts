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

/** What a repair removed, as {@link WorkflowDoc.onRepair} reports it. */
export interface RepairReport {
  /** Blocks removed because another block had the same id (the one kept is the oldest). */
  duplicateBlocks: string[]
  /** Connections removed because a source or target block does not exist (or is not named). */
  danglingConnections: string[]
  /** Connections removed because another had the same id or the same ends and handles. */
  duplicateConnections: string[]
}

const DEFAULT_VIEWPORT: Viewport = { x: 0, y: 0, zoom: 1 }

type YMap = Y.Map<unknown>

/** What the index knows of one connection map (null: missing or not a string). */
interface ConnEnds {
  id: string | null
  source: string | null
  target: string | null
  /** source, sourceHandle, target, targetHandle: equal keys are the same edge. */
  key: string
}

const CONN_KEYS = new Set(['id', 'source', 'target', 'sourceHandle', 'targetHandle'])

/**
 * Typed access to a workflow document: blocks and connections are `Y.Map`s in `Y.Array`s,
 * `viewport` and `meta` are maps (docs/workflow-schema.md). Every mutation is one transaction
 * with the room's local origin, so it is one undo step and one update on the wire.
 *
 * Blocks and connections are indexed by id (kept up to date from each transaction's own
 * inserts and deletes), so an edit costs the same in a workflow of ten blocks or ten
 * thousand. After every transaction that changed blocks or connections, what the server's
 * engine would refuse and the editor could not show is repaired in one transaction (see
 * {@link WorkflowDoc.onRepair}).
 */
export class WorkflowDoc {
  /** The `blocks` array. */
  readonly blocksArray: Y.Array<YMap>
  /** The `connections` array. */
  readonly connectionsArray: Y.Array<YMap>
  /** The `viewport` map. */
  readonly viewportMap: Y.Map<unknown>
  /** The `meta` map. */
  readonly metaMap: Y.Map<unknown>
  /** Whether this replica repairs conflicts; the room turns it off on a read-only connection, whose repairs the server would refuse. */
  repairs = true
  /** Transaction origin of repairs: not the user's action, so never an undo step. */
  readonly repairOrigin = { local: true, repair: true }
  // Keyed by the block's map, so a block deleted and re-created under the same id is re-read.
  private blockCache = new WeakMap<YMap, Block>()
  private connCache = new WeakMap<YMap, Connection>()
  private blockList: ListView<Block>
  private connectionList: ListView<Connection>
  private viewportValue: Viewport | null = null
  private metaValue: Record<string, unknown> | null = null
  private listeners = new Set<(c: WorkflowChange) => void>()
  private repairListeners = new Set<(r: RepairReport) => void>()
  private editKeyListeners = new Set<(key: string | null) => void>()
  // The index. Several maps per id only while a concurrent conflict waits for its repair.
  private blockMaps = new Map<string, YMap[]>()
  private blockIdOf = new Map<YMap, string>()
  private connEnds = new Map<YMap, ConnEnds>()
  private connsById = new Map<string, Set<YMap>>()
  private connsByKey = new Map<string, Set<YMap>>()
  private connsByBlock = new Map<string, Set<YMap>>()

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
    this.blockList = new ListView(this.blocksArray, (m) => (typeof m.get('id') === 'string' ? this.read(m) : null))
    this.connectionList = new ListView(this.connectionsArray, (m) => {
      let c = this.connCache.get(m)
      if (!c) {
        c = m.toJSON() as Connection
        this.connCache.set(m, c)
      }
      return typeof c.id === 'string' && typeof c.source === 'string' && typeof c.target === 'string' ? c : null
    })
    for (const m of this.blocksArray) if (m instanceof Y.Map) this.indexBlock(m)
    for (const m of this.connectionsArray) if (m instanceof Y.Map) this.indexConn(m)
    doc.on('afterTransaction', (txn: Y.Transaction) => this.afterTransaction(txn))
    watchTextMigrations(doc, origin)
    if (this.blocksArray.length || this.connectionsArray.length) this.repair(new Set(this.blockMaps.keys()), new Set(this.connEnds.keys()))
  }

  private afterTransaction(txn: Y.Transaction) {
    const change: WorkflowChange = {
      blocks: false,
      connections: false,
      viewport: false,
      meta: false,
      blockIds: new Set(),
    }
    // Blocks and connections to check for conflicts once the index is up to date.
    const suspectIds = new Set<string>()
    const suspectConns = new Set<YMap>()
    const blocksListed = txn.changed.get(this.blocksArray as unknown as Y.AbstractType<Y.YEvent<any>>)?.has(null) ?? false
    const connsListed = txn.changed.get(this.connectionsArray as unknown as Y.AbstractType<Y.YEvent<any>>)?.has(null) ?? false
    if (blocksListed || connsListed) this.indexInsertsAndDeletes(txn, suspectIds, suspectConns)
    for (const [type, keys] of txn.changed) {
      // A block or connection whose id or ends were rewritten in place (not by this SDK).
      const parent = type._item?.parent
      if (!(type instanceof Y.Map) || type._item?.deleted) continue
      if (parent === this.blocksArray && keys.has('id')) {
        const old = this.blockIdOf.get(type)
        if (old !== undefined) suspectIds.add(old)
        this.unindexBlock(type)
        const id = this.indexBlock(type)
        if (id !== null) suspectIds.add(id)
        this.blockList.reset()
      } else if (parent === this.connectionsArray && [...keys].some((k) => k !== null && CONN_KEYS.has(k))) {
        this.unindexConn(type)
        this.indexConn(type)
        suspectConns.add(type)
        // Like a block's id: a map that becomes a valid connection in place (keys set after
        // the push, by another client) must be listed, and the list's patch skips it.
        this.connectionList.reset()
      }
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
          this.blockList.touch(child)
          const id = this.blockIdOf.get(child)
          if (id !== undefined) change.blockIds.add(id)
        }
      } else if (t === this.connectionsArray) {
        change.connections = true
        if (child instanceof Y.Map) {
          this.connCache.delete(child)
          this.connectionList.touch(child)
        }
      } else if (t === this.viewportMap) change.viewport = true
      else if (t === this.metaMap) change.meta = true
    }
    if (!(change.blocks || change.connections || change.viewport || change.meta)) return
    if (change.viewport) this.viewportValue = null
    if (change.meta) this.metaValue = null
    for (const l of [...this.listeners]) l(change)
    // Yjs runs a transaction started here after this one's observers, as its own update.
    if (this.repairs && txn.origin !== this.repairOrigin && (suspectIds.size || suspectConns.size)) this.repair(suspectIds, suspectConns)
  }

  /**
   * Indexes the maps this transaction inserted into and deleted from the two arrays: read
   * from the transaction's new structs and delete set, never by walking the arrays.
   */
  private indexInsertsAndDeletes(txn: Y.Transaction, suspectIds: Set<string>, suspectConns: Set<YMap>) {
    const store = this.doc.store
    txn.afterState.forEach((clock, client) => {
      const before = txn.beforeState.get(client) ?? 0
      if (clock <= before) return
      const structs = store.clients.get(client)
      if (!structs) return
      for (let i = Y.findIndexSS(structs, before); i < structs.length; i++) {
        const s = structs[i]
        if (!(s instanceof Y.Item) || s.deleted || s.parentSub !== null) continue
        if (s.parent !== this.blocksArray && s.parent !== this.connectionsArray) continue
        for (const m of s.content.getContent()) {
          if (!(m instanceof Y.Map)) continue
          if (s.parent === this.blocksArray) {
            this.blockList.add(m)
            const id = this.indexBlock(m)
            if (id !== null) suspectIds.add(id)
          } else {
            this.connectionList.add(m)
            this.indexConn(m)
            suspectConns.add(m)
          }
        }
      }
    })
    Y.iterateDeletedStructs(txn, txn.deleteSet, (s) => {
      if (!(s instanceof Y.Item) || s.parentSub !== null) return
      if (s.parent !== this.blocksArray && s.parent !== this.connectionsArray) return
      for (const m of s.content.getContent()) {
        if (!(m instanceof Y.Map)) continue
        if (s.parent === this.blocksArray) {
          this.blockList.remove(m)
          const id = this.blockIdOf.get(m)
          if (id !== undefined) suspectIds.add(id)
          this.unindexBlock(m)
        } else {
          this.connectionList.remove(m)
          this.unindexConn(m)
        }
      }
    })
  }

  private indexBlock(m: YMap): string | null {
    const id = m.get('id')
    if (typeof id !== 'string') return null
    if (this.blockIdOf.get(m) === id) return id
    this.blockIdOf.set(m, id)
    const list = this.blockMaps.get(id)
    if (list) list.push(m)
    else this.blockMaps.set(id, [m])
    return id
  }

  private unindexBlock(m: YMap) {
    const id = this.blockIdOf.get(m)
    if (id === undefined) return
    this.blockIdOf.delete(m)
    const list = this.blockMaps.get(id)
    if (!list) return
    const rest = list.filter((x) => x !== m)
    if (rest.length) this.blockMaps.set(id, rest)
    else this.blockMaps.delete(id)
  }

  private indexConn(m: YMap) {
    if (this.connEnds.has(m)) return
    const str = (k: string) => {
      const v = m.get(k)
      return typeof v === 'string' ? v : null
    }
    const ends: ConnEnds = {
      id: str('id'),
      source: str('source'),
      target: str('target'),
      key: JSON.stringify([str('source'), str('sourceHandle'), str('target'), str('targetHandle')]),
    }
    this.connEnds.set(m, ends)
    if (ends.id !== null) addTo(this.connsById, ends.id, m)
    addTo(this.connsByKey, ends.key, m)
    if (ends.source !== null) addTo(this.connsByBlock, ends.source, m)
    if (ends.target !== null) addTo(this.connsByBlock, ends.target, m)
  }

  private unindexConn(m: YMap) {
    const ends = this.connEnds.get(m)
    if (!ends) return
    this.connEnds.delete(m)
    if (ends.id !== null) removeFrom(this.connsById, ends.id, m)
    removeFrom(this.connsByKey, ends.key, m)
    if (ends.source !== null) removeFrom(this.connsByBlock, ends.source, m)
    if (ends.target !== null) removeFrom(this.connsByBlock, ends.target, m)
  }

  /** The map kept when several blocks share an id: the oldest by Yjs id, the same on every replica. */
  private blockMap(id: string): YMap | undefined {
    const list = this.blockMaps.get(id)
    if (!list) return undefined
    return list.length === 1 ? list[0] : oldest(list)
  }

  /**
   * Removes what the engine would refuse and the editor could not show or delete, after
   * concurrent edits: blocks sharing an id, connections naming a missing block, connections
   * sharing an id or the same ends and handles. Only deletes, and chooses by document state
   * and Yjs ids alone (the oldest of a group is kept), so every replica repairing the same
   * state deletes the same items: two clients repairing at once converge instead of fighting,
   * and a repair cannot create a new conflict.
   */
  private repair(suspectIds: Set<string>, suspectConns: Set<YMap>) {
    const report: RepairReport = { duplicateBlocks: [], danglingConnections: [], duplicateConnections: [] }
    const dropBlocks: YMap[] = []
    const dropConns = new Set<YMap>()
    for (const id of suspectIds) {
      const list = this.blockMaps.get(id)
      if (list && list.length > 1) {
        const keep = oldest(list)
        for (const m of list) if (m !== keep) (dropBlocks.push(m), report.duplicateBlocks.push(id))
      }
      for (const c of this.connsByBlock.get(id) ?? []) suspectConns.add(c)
    }
    const dangling = (c: YMap) => {
      const e = this.connEnds.get(c)!
      return e.id === null || e.source === null || e.target === null || !this.blockMaps.has(e.source) || !this.blockMaps.has(e.target)
    }
    // Among a group, the oldest connection not dropped for an earlier reason is kept.
    const idLoser = (c: YMap) => {
      const e = this.connEnds.get(c)!
      const group = [...this.connsById.get(e.id!)!].filter((x) => !dangling(x))
      return group.length > 1 && oldest(group) !== c
    }
    for (const c of suspectConns) {
      const e = this.connEnds.get(c)
      if (!e || c._item?.deleted) continue
      if (dangling(c)) {
        dropConns.add(c)
        report.danglingConnections.push(e.id ?? '')
        continue
      }
      if (idLoser(c)) {
        dropConns.add(c)
        report.duplicateConnections.push(e.id!)
        continue
      }
      const same = [...this.connsByKey.get(e.key)!].filter((x) => !dangling(x) && !idLoser(x))
      if (same.length > 1 && oldest(same) !== c) {
        dropConns.add(c)
        report.duplicateConnections.push(e.id!)
      }
    }
    if (!dropBlocks.length && !dropConns.size) return
    this.doc.transact((txn) => {
      deleteMaps(txn, this.connectionsArray, dropConns)
      deleteMaps(txn, this.blocksArray, dropBlocks)
    }, this.repairOrigin)
    // Called from an observer, Yjs indexes this transaction only after the current one.
    for (const c of dropConns) this.unindexConn(c)
    for (const m of dropBlocks) this.unindexBlock(m)
    for (const l of [...this.repairListeners]) l(report)
  }

  /** Calls `cb` after every transaction that changed the workflow. */
  observe(cb: (change: WorkflowChange) => void): Unsubscribe {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }

  /**
   * Calls `cb` after a repair: concurrent edits left blocks sharing an id, or connections that
   * dangle or duplicate another, and this client removed them in one transaction (not an undo
   * step). Every client repairs the same way, so the removals converge.
   */
  onRepair(cb: (report: RepairReport) => void): Unsubscribe {
    this.repairListeners.add(cb)
    return () => this.repairListeners.delete(cb)
  }

  /** Every block; the same array (and the same object per unchanged block) until something changes. */
  blocks(): Block[] {
    return this.blockList.get()
  }

  /** One block by id (right inside `transact` too: the index follows every helper at once). */
  block(id: string): Block | undefined {
    const m = this.blockMap(id)
    return m ? this.read(m) : undefined
  }

  private read(m: YMap): Block {
    let b = this.blockCache.get(m)
    if (!b) {
      b = readBlock(m)
      this.blockCache.set(m, b)
    }
    return b
  }

  /** Every connection; the same array, and the same object per unchanged connection, until something changes. */
  connections(): Connection[] {
    return this.connectionList.get()
  }

  /**
   * Why the engine would refuse this connection (a missing block, a condition left without one
   * of its handles, an error handle on a block that does not route its errors, an edge into the
   * error handler), or null. Editors show such connections so they can be deleted.
   */
  connectionProblem(c: Connection): string | null {
    return connectionProblem(c, this.block(c.source), this.block(c.target))
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

  /** Runs `fn` as one transaction: one undo step (never merged with another), one update on the wire. */
  transact(fn: () => void) {
    this.edit(null, fn)
  }

  /**
   * Calls `cb` before each of my edits through these helpers with what it edits: consecutive
   * edits with the same key (typing into one field, nudging one block) may share an undo step;
   * a null key (adding, removing, connecting, `transact`) never shares one.
   */
  onEditKey(cb: (key: string | null) => void): Unsubscribe {
    this.editKeyListeners.add(cb)
    return () => this.editKeyListeners.delete(cb)
  }

  /**
   * Runs `fn` as one transaction that shares an undo step with my previous one if that had the
   * same `key` and came less than the capture window (500 ms) before: for bindings that write
   * per keystroke (a text field's binding passes `text:<block>:<field>`). Null never shares.
   */
  transactMerging(key: string | null, fn: () => void) {
    this.edit(key, fn)
  }

  private edit(key: string | null, fn: (txn: Y.Transaction) => void) {
    for (const l of [...this.editKeyListeners]) l(key)
    this.doc.transact(fn, this.origin)
  }

  /** Adds a block; returns its id. Required config fields start from the schema's example. */
  addBlock(b: NewBlock): string {
    const spec = specOf(b.type)
    if (!spec) throw new Error(`unknown block type ${JSON.stringify(b.type)}`)
    const id = b.id ?? newId(b.type)
    checkId(id)
    if (this.blockMaps.has(id)) throw new Error(`a block with id ${JSON.stringify(id)} exists`)
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
    // insert at the end, not push: push walks from the first item when the array has no search marker.
    this.edit(null, () => this.blocksArray.insert(this.blocksArray.length, [m]))
    this.indexBlock(m)
    return id
  }

  /** Merges a patch into one block. */
  updateBlock(id: string, patch: BlockPatch) {
    const m = this.mapOf(id)
    const keys = (o?: Record<string, unknown>) => (o ? Object.keys(o).sort().join(',') : '')
    this.edit(`update:${id}:${patch.type !== undefined}:${keys(patch.data)}:${keys(patch.config)}`, () => {
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
    const fields = this.blockMap(blockId)?.get(part)
    const v = fields instanceof Y.Map ? fields.get(field) : undefined
    return v instanceof Y.Text ? v : undefined
  }

  /**
   * Sets a text field to `value` as a diff into its `Y.Text` (migrating a plain string first),
   * one transaction; `caret` (the caret in `value`) disambiguates where the edit happened.
   */
  setText(blockId: string, part: FieldPart, field: string, value: string, caret?: number) {
    const m = this.mapOf(blockId)
    // Keyed like updateBlock's: keystrokes into one field within the undo window are one step.
    this.edit(`text:${blockId}:${part}:${field}`, () => {
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
    this.edit(`move:${id}`, () => m.set('position', { x: position.x, y: position.y }))
  }

  /** Removes a block and every connection touching it, in one transaction. */
  removeBlock(id: string) {
    this.removeBlocks([id])
  }

  /**
   * Removes blocks and every connection touching them, in one transaction. A connection to
   * one of them that a collaborator adds concurrently is removed by the repair.
   */
  removeBlocks(ids: string[]) {
    const blocks: YMap[] = []
    const conns = new Set<YMap>()
    for (const id of ids) {
      for (const m of this.blockMaps.get(id) ?? []) blocks.push(m)
      for (const c of this.connsByBlock.get(id) ?? []) conns.add(c)
    }
    if (!blocks.length && !conns.size) return
    this.edit(null, (txn) => {
      deleteMaps(txn, this.connectionsArray, conns)
      deleteMaps(txn, this.blocksArray, blocks)
    })
    for (const c of conns) this.unindexConn(c)
    for (const m of blocks) this.unindexBlock(m)
  }

  /**
   * Adds a connection with a random id (unless `id` is given and free); null when it would
   * duplicate one, loop on itself, or name a missing block.
   */
  connect(c: Omit<Connection, 'id'> & { id?: string }): string | null {
    if (c.source === c.target) return null
    if (!this.blockMaps.has(c.source) || !this.blockMaps.has(c.target)) return null
    const sh = c.sourceHandle ?? null
    const th = c.targetHandle ?? null
    const key = JSON.stringify([c.source, sh, c.target, th])
    if (this.connsByKey.get(key)?.size) return null
    let id = c.id ?? `e-${rand()}`
    while (this.connsById.get(id)?.size) id = `${c.id ?? 'e'}-${rand()}`
    const m = new Y.Map<unknown>()
    m.set('id', id)
    m.set('source', c.source)
    m.set('target', c.target)
    if (sh !== null) m.set('sourceHandle', sh)
    if (th !== null) m.set('targetHandle', th)
    this.edit(null, () => this.connectionsArray.insert(this.connectionsArray.length, [m]))
    this.indexConn(m)
    return id
  }

  /** Removes connections by id. */
  disconnect(...ids: string[]) {
    const conns = new Set<YMap>()
    for (const id of ids) for (const c of this.connsById.get(id) ?? []) conns.add(c)
    if (!conns.size) return
    this.edit(null, (txn) => deleteMaps(txn, this.connectionsArray, conns))
    for (const c of conns) this.unindexConn(c)
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
    this.edit(`meta:${key}`, () => (value === undefined ? this.metaMap.delete(key) : this.metaMap.set(key, value)))
  }

  private mapOf(id: string): YMap {
    const m = this.blockMap(id)
    if (!m) throw new Error(`no block ${JSON.stringify(id)}`)
    return m
  }
}

/**
 * The list an array of maps reads as (`blocks()`, `connections()`), patched from what each
 * transaction inserted, deleted and changed instead of re-read: a re-read walks every item
 * (~8 ms at 10k blocks), a patch copies one array. Inserts anywhere but at the end (rare:
 * concurrent inserts that Yjs orders before an existing item) fall back to a re-read.
 */
class ListView<T> {
  private list: T[] | null = null
  /** The map each slot of `list` was read from. */
  private maps: YMap[] = []
  private added = new Set<YMap>()
  private removed = new Set<YMap>()
  private stale = new Set<YMap>()

  constructor(
    private readonly arr: Y.Array<YMap>,
    /** The value of one map (cached by the caller), or null to leave it out. */
    private readonly read: (m: YMap) => T | null,
  ) {}

  /** Forgets the list: the next `get` re-reads the array. */
  reset() {
    this.list = null
  }

  add(m: YMap) {
    if (this.list) this.added.add(m)
  }

  remove(m: YMap) {
    if (this.list && !this.added.delete(m)) this.removed.add(m)
  }

  touch(m: YMap) {
    if (this.list && !this.added.has(m)) this.stale.add(m)
  }

  get(): T[] {
    if (this.list && !this.added.size && !this.removed.size && !this.stale.size) return this.list
    if (!this.list || !this.patch()) this.reread()
    this.added.clear()
    this.removed.clear()
    this.stale.clear()
    return this.list!
  }

  private patch(): boolean {
    let list = this.list!.slice()
    let maps = this.maps.slice()
    if (this.removed.size > 16) {
      const keep = maps.map((m) => !this.removed.has(m))
      list = list.filter((_, i) => keep[i])
      maps = maps.filter((_, i) => keep[i])
    } else {
      for (const m of this.removed) {
        const i = maps.indexOf(m)
        if (i >= 0) (maps.splice(i, 1), list.splice(i, 1))
      }
    }
    for (const m of this.stale) {
      const i = maps.indexOf(m)
      if (i < 0) continue
      const v = this.read(m)
      if (v === null) return false
      list[i] = v
    }
    const live = [...this.added].filter((m) => m._item && !m._item.deleted)
    if (live.length) {
      // Appended (the usual case) when the last live items of the array are exactly these.
      let it: Y.Item | null = live[0]._item!
      while (it.right) it = it.right
      const suffix: YMap[] = []
      for (; it && suffix.length < live.length; it = it.left) {
        if (it.deleted || !it.countable) continue
        for (const m of it.content.getContent().reverse()) {
          if (!(m instanceof Y.Map) || !this.added.has(m)) return false
          suffix.push(m)
        }
      }
      if (suffix.length !== live.length) return false
      for (const m of suffix.reverse()) {
        const v = this.read(m)
        if (v !== null) (maps.push(m), list.push(v))
      }
    }
    this.list = list
    this.maps = maps
    return true
  }

  private reread() {
    const list: T[] = []
    const maps: YMap[] = []
    for (const m of this.arr.toArray()) {
      if (!(m instanceof Y.Map)) continue
      const v = this.read(m)
      if (v !== null) (maps.push(m), list.push(v))
    }
    this.list = list
    this.maps = maps
  }
}

/** The source handle a block's failure leaves through when its `config.onError` is `route`. */
export const ERROR_HANDLE = 'error'

/** Whether a block's failures leave through its {@link ERROR_HANDLE} (`onError: "route"`). */
export function routesErrors(block: Block): boolean {
  return block.config.onError === 'route'
}

/** {@link WorkflowDoc.connectionProblem} for a connection and its blocks (undefined: missing). */
export function connectionProblem(c: Connection, source: Block | undefined, target: Block | undefined): string | null {
  if (!source) return `source block \`${c.source}\` does not exist`
  if (!target) return `target block \`${c.target}\` does not exist`
  if (target.type === 'errorHandler') {
    return `enters the error handler \`${c.target}\`, which has no inputs: it runs when the execution fails`
  }
  if (c.sourceHandle === ERROR_HANDLE) {
    if (!routesErrors(source)) return `leaves \`${c.source}\` through its error handle, but its onError is not \`route\``
  } else if (source.type === 'condition') {
    const allowed = conditionHandles(source.config)
    if (!c.sourceHandle || !allowed.includes(c.sourceHandle)) {
      return `leaves condition \`${c.source}\` without one of its handles (${allowed.join(', ')})`
    }
  }
  return null
}

/**
 * The handles a condition block leaves through, as the server's engine reads them
 * (`handles` in crates/resonant-engine/src/block/condition.rs): its cases' handles and `default`, or
 * `true` and `false` without cases.
 */
export function conditionHandles(config: Record<string, unknown>): string[] {
  if (!Array.isArray(config.cases)) return ['true', 'false']
  const names: string[] = []
  for (const c of config.cases) {
    const h = isObject(c) ? (c as { handle?: unknown }).handle : undefined
    if (typeof h === 'string') names.push(h)
  }
  return [...names, 'default']
}

function readBlock(m: YMap): Block {
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
function mergeInto(m: YMap, key: FieldPart, patch: Record<string, unknown>) {
  let target = m.get(key)
  if (!(target instanceof Y.Map)) {
    const current = isObject(target) ? (target as Record<string, unknown>) : {}
    target = toYMap(current)
    m.set(key, target)
  }
  const t = target as YMap
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) t.delete(k)
    // Text fields change as a diff, so concurrent typing merges (text.ts).
    else if (typeof v === 'string' && isTextField(m.get('type'), key, k)) setTextField(t, k, v)
    else if (JSON.stringify(t.get(k)) !== JSON.stringify(v)) t.set(k, clone(v))
  }
}

function toYMap(obj: Record<string, unknown>, isText?: (key: string) => boolean): YMap {
  const m = new Y.Map<unknown>()
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue
    m.set(k, typeof v === 'string' && isText?.(k) ? new Y.Text(v) : clone(v))
  }
  return m
}

/**
 * Deletes maps from an array by their items, without looking up their indexes (a walk over
 * the array). The array's search markers cache index → item and would now be off: cleared,
 * as Yjs' own UndoManager does after deleting items directly.
 */
function deleteMaps(txn: Y.Transaction, arr: Y.Array<YMap>, maps: Iterable<YMap>) {
  let any = false
  for (const m of maps) {
    const item = m._item
    if (item && !item.deleted && item.parent === arr) {
      item.delete(txn)
      any = true
    }
  }
  if (any && arr._searchMarker) arr._searchMarker.length = 0
}

/** The oldest of some maps by their items' Yjs ids (client, then clock): the same choice everywhere. */
function oldest(maps: YMap[]): YMap {
  let best = maps[0]
  for (const m of maps) {
    const a = m._item!.id
    const b = best._item!.id
    if (a.client < b.client || (a.client === b.client && a.clock < b.clock)) best = m
  }
  return best
}

function addTo<K, V>(index: Map<K, Set<V>>, k: K, v: V) {
  const s = index.get(k)
  if (s) s.add(v)
  else index.set(k, new Set([v]))
}

function removeFrom<K, V>(index: Map<K, Set<V>>, k: K, v: V) {
  const s = index.get(k)
  if (!s) return
  s.delete(v)
  if (!s.size) index.delete(k)
}

function checkId(id: string) {
  if (!id || /[/[\]]/.test(id) || new TextEncoder().encode(id).length > 200) {
    throw new Error(`bad block id ${JSON.stringify(id)}: 1–200 bytes without '/', '[' or ']'`)
  }
}

function newId(type: string) {
  return `${type}-${rand()}`
}

/** 10 base-36 characters from the platform's CSPRNG (~51 bits): ids made concurrently do not collide. */
function rand() {
  let s = ''
  for (const b of crypto.getRandomValues(new Uint8Array(10))) s += (b % 36).toString(36)
  return s
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
