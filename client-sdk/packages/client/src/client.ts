import { Room, httpUrl } from './room.js'
import { clearLocalCopies } from './offline.js'
import type { ClientOptions } from './types.js'

/** How long a room outlives its last holder, so StrictMode's unmount-remount reuses its socket. */
const LEAVE_GRACE_MS = 250
/** How long a left room with unsaved changes stays open to store them (`unsavedGraceMs`). */
const UNSAVED_GRACE_MS = 5 * 60 * 1000

interface Entry {
  room: Room
  holders: number
  timer: ReturnType<typeof setTimeout> | null
}

/** A connection to one Resonant server: opens rooms (one socket per workflow). */
export class ResonantClient {
  private rooms = new Map<string, Entry>()
  /** Set by `close()`: rooms are retired even if someone still holds them. */
  private closing = false

  constructor(readonly options: ClientOptions) {}

  /**
   * Enters a workflow's room. Rooms are shared and reference-counted: each call must be paired
   * with one `leave()`; the socket closes shortly after the last one.
   */
  enterRoom(workflowId: string): { room: Room; leave: () => void } {
    this.closing = false
    let entry = this.rooms.get(workflowId)
    if (!entry) {
      entry = { room: new Room(workflowId, this.options), holders: 0, timer: null }
      this.rooms.set(workflowId, entry)
    }
    if (entry.timer) {
      clearTimeout(entry.timer)
      entry.timer = null
    }
    entry.holders++
    const e = entry
    let left = false
    const leave = () => {
      if (left) return
      left = true
      e.holders--
      if (e.holders === 0) {
        e.timer = setTimeout(() => {
          if (e.holders !== 0 || this.rooms.get(workflowId) !== e) return
          void this.retire(workflowId, e)
        }, LEAVE_GRACE_MS)
      }
    }
    return { room: entry.room, leave }
  }

  /**
   * Destroys a room nobody holds once its unsaved changes (offline, or unacknowledged) are
   * stored, or after `unsavedGraceMs`, rather than dropping them with the document.
   */
  private async retire(workflowId: string, e: Entry): Promise<void> {
    const close = () => {
      if ((e.holders === 0 || this.closing) && this.rooms.get(workflowId) === e) {
        this.rooms.delete(workflowId)
        e.room.destroy()
      }
    }
    if (!unsaved(e.room)) return close()
    await new Promise<void>((resolve) => {
      const limit = setTimeout(resolve, this.options.unsavedGraceMs ?? UNSAVED_GRACE_MS)
      const done = () => {
        clearTimeout(limit)
        resolve()
      }
      // A room that stops for good (or is destroyed) rejects: nothing more can be saved.
      e.room.whenSaved().then(done, done)
    })
    close()
  }

  /** The open room of a workflow, if any. */
  room(workflowId: string): Room | undefined {
    return this.rooms.get(workflowId)?.room
  }

  /**
   * Leaves every room gracefully: each is destroyed once its unsaved changes are stored (at
   * most `unsavedGraceMs`), as after the last `leave()`. Resolves when all are closed. Rooms
   * entered again before then are kept.
   */
  async close(): Promise<void> {
    this.closing = true
    const pending: Promise<void>[] = []
    for (const [id, e] of this.rooms) {
      if (e.timer) clearTimeout(e.timer)
      e.timer = null
      pending.push(this.retire(id, e))
    }
    await Promise.all(pending)
  }

  /**
   * Signing out on a shared browser: destroys every room now (like `destroy()`, dropping what
   * the server has not confirmed), then deletes this user's offline copies of this server's
   * workflows from IndexedDB. Resolves with how many were deleted. Call `await close()` first
   * to give unsaved changes their chance.
   */
  async clearLocalData(): Promise<number> {
    this.destroy()
    return clearLocalCopies(httpUrl(this.options.url), this.options.user.id)
  }

  /** Closes every room now, dropping changes the server has not confirmed. */
  destroy() {
    for (const e of this.rooms.values()) {
      if (e.timer) clearTimeout(e.timer)
      e.room.destroy()
    }
    this.rooms.clear()
  }
}

function unsaved(room: Room): boolean {
  return room.saveStatus === 'saving' || room.saveStatus === 'offline' || room.saveStatus === 'local'
}
