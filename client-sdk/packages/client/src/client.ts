import { Room } from './room.js'
import type { ClientOptions } from './types.js'

/** How long a room outlives its last holder, so StrictMode's unmount-remount reuses its socket. */
const LEAVE_GRACE_MS = 250
/** How long a left room with unsaved changes stays open to store them. */
const UNSAVED_GRACE_MS = 5 * 60 * 1000

interface Entry {
  room: Room
  holders: number
  timer: ReturnType<typeof setTimeout> | null
}

/** A connection to one Resonant server: opens rooms (one socket per workflow). */
export class ResonantClient {
  private rooms = new Map<string, Entry>()

  constructor(readonly options: ClientOptions) {}

  /**
   * Enters a workflow's room. Rooms are shared and reference-counted: each call must be paired
   * with one `leave()`; the socket closes shortly after the last one.
   */
  enterRoom(workflowId: string): { room: Room; leave: () => void } {
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
          // Unsaved changes (offline, or unacknowledged) keep the room open until they are
          // stored, up to a limit, rather than vanishing with the document.
          const unsaved = e.room.saveStatus === 'saving' || e.room.saveStatus === 'offline'
          const close = () => {
            if (e.holders === 0 && this.rooms.get(workflowId) === e) {
              this.rooms.delete(workflowId)
              e.room.destroy()
            }
          }
          if (!unsaved) return close()
          const limit = setTimeout(close, UNSAVED_GRACE_MS)
          void e.room.whenSaved().then(() => {
            clearTimeout(limit)
            close()
          })
        }, LEAVE_GRACE_MS)
      }
    }
    return { room: entry.room, leave }
  }

  /** The open room of a workflow, if any. */
  room(workflowId: string): Room | undefined {
    return this.rooms.get(workflowId)?.room
  }

  /** Closes every room now. */
  destroy() {
    for (const e of this.rooms.values()) {
      if (e.timer) clearTimeout(e.timer)
      e.room.destroy()
    }
    this.rooms.clear()
  }
}
