/**
 * A room's copy in this browser's IndexedDB (y-indexeddb), so a reload while offline shows
 * the last state and edits made offline survive closing the tab. It is only a cache: the
 * server stays the judge of what is saved (`whenSaved()` still waits for its acknowledgement).
 *
 * Besides the document's updates (y-indexeddb's `updates` store), two flags live in its
 * `custom` store: `synced` (this copy once held the server's state, so it may be shown as the
 * workflow when the server cannot be reached) and `unsaved` (it holds local edits the server
 * had not acknowledged when they were written; the room reports `local` until a connection
 * acknowledges its handshake).
 */
import type * as Y from 'yjs'
import { IndexeddbPersistence, clearDocument } from 'y-indexeddb'

/** How long opening the local copy may take before the room connects without it. */
const OPEN_TIMEOUT_MS = 3000

/**
 * One database per server, user and workflow, so another user signing in on the same browser
 * never sees (or uploads) someone else's copy.
 */
export function localName(serverUrl: string, userId: string, workflowId: string): string {
  return `resonant:${serverUrl}:${encodeURIComponent(userId)}:${encodeURIComponent(workflowId)}`
}

/**
 * Deletes every local copy of one user on one server (sign-out on a shared browser). Copies
 * still open (rooms not destroyed) are deleted once they close. Needs `indexedDB.databases()`
 * (Chromium, Firefox 126+, Safari 14+); resolves with how many copies were deleted.
 */
export async function clearLocalCopies(serverUrl: string, userId: string): Promise<number> {
  const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB
  if (!idb || typeof idb.databases !== 'function') return 0
  const prefix = `resonant:${serverUrl}:${encodeURIComponent(userId)}:`
  const names = (await idb.databases()).map((d) => d.name ?? '').filter((n) => n.startsWith(prefix))
  await Promise.all(names.map((n) => clearDocument(n)))
  return names.length
}

/** Whether this environment has IndexedDB (a browser, or a test with fake-indexeddb). */
export function hasIndexedDb(): boolean {
  return typeof (globalThis as { indexedDB?: unknown }).indexedDB === 'object' && (globalThis as { indexedDB?: unknown }).indexedDB !== null
}

/** What was found in the local copy when it was opened. */
export interface LocalState {
  /** The copy once held the server's state (the room may count as loaded from it). */
  synced: boolean
  /** The copy holds edits the server had not acknowledged. */
  unsaved: boolean
}

export class LocalCopy {
  readonly persistence: IndexeddbPersistence
  private _ready = false
  private flags = { synced: false, unsaved: false }
  private cleared = false

  constructor(
    readonly name: string,
    doc: Y.Doc,
  ) {
    this.persistence = new IndexeddbPersistence(name, doc)
  }

  /** True once the local copy was read into the document (and is being written to). */
  get ready(): boolean {
    return this._ready
  }

  /**
   * Reads the copy into the document; resolves with its flags, or null when IndexedDB could
   * not be opened in time (private modes of some browsers refuse it): the room then works as
   * if offline persistence were off.
   */
  async load(): Promise<LocalState | null> {
    const p = this.persistence
    const opened = p.whenSynced.then(async () => {
      const [synced, unsaved] = await Promise.all([p.get('synced'), p.get('unsaved')])
      return { synced: synced === 1, unsaved: unsaved === 1 }
    })
    const failed = (p as unknown as { _db: Promise<unknown> })._db.then(
      () => new Promise<null>(() => {}),
      () => null,
    )
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), OPEN_TIMEOUT_MS)))
    try {
      const state = await Promise.race([opened, failed, timeout])
      if (state && !this.cleared) {
        this.flags = { ...state }
        this._ready = true
      }
      return this.cleared ? null : state
    } catch {
      return null
    } finally {
      clearTimeout(timer)
    }
  }

  /** Records that the copy holds the server's state. */
  markSynced() {
    this.setFlag('synced', true)
  }

  /** Records whether the copy holds edits the server has not acknowledged. */
  setUnsaved(unsaved: boolean) {
    this.setFlag('unsaved', unsaved)
  }

  private setFlag(key: 'synced' | 'unsaved', value: boolean) {
    if (!this._ready || this.cleared || this.flags[key] === value) return
    this.flags[key] = value
    this.persistence.set(key, value ? 1 : 0).catch(() => {})
  }

  /** Deletes the copy (the workflow was deleted, or this user lost access to it). */
  async clear(): Promise<void> {
    if (this.cleared) return
    this.cleared = true
    this._ready = false
    // Closed first: deleting waits for every open connection to the database.
    await this.persistence.destroy().catch(() => {})
    await clearDocument(this.name).catch(() => {})
  }

  /** Stops writing; the copy stays for next time. */
  destroy() {
    void this.persistence.destroy().catch(() => {})
  }
}
