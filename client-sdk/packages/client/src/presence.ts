import type { Awareness } from 'y-protocols/awareness'
import type { Peer, PresenceState, PresenceUser, Unsubscribe } from './types.js'

/**
 * My presence (cursor, selection, drag ghost) and everyone else's, over Yjs awareness.
 * Sends are throttled (a trailing send always carries the latest state). While my socket
 * reconnects, y-websocket drops every remote state; they are kept here, marked stale, for a
 * grace period so they do not flash away and back.
 */
export class Presence {
  private state: PresenceState
  private lastSent = 0
  private timer: ReturnType<typeof setTimeout> | null = null
  private peers = new Map<number, Peer>()
  private list: Peer[] = []
  private listeners = new Set<(others: Peer[]) => void>()
  private staleTimer: ReturnType<typeof setTimeout> | null = null
  private connected = false
  private destroyed = false

  constructor(
    private readonly awareness: Awareness,
    user: PresenceUser,
    private readonly throttleMs: number,
    private readonly staleGraceMs: number,
  ) {
    this.state = { user, cursor: null, selected: null, drag: null, editing: null, custom: {} }
    awareness.setLocalState(this.state)
    awareness.on('change', this.onChange)
  }

  /** My current state (including changes not yet sent). */
  me(): PresenceState {
    return this.state
  }

  /** Changes my state; sent at most once per throttle interval. */
  update(patch: Partial<Omit<PresenceState, 'user'>>) {
    this.state = { ...this.state, ...patch }
    const wait = this.lastSent + this.throttleMs - Date.now()
    if (wait <= 0 && !this.timer) this.flush()
    else if (!this.timer) this.timer = setTimeout(() => this.flush(), Math.max(0, wait))
  }

  /** Merges keys into my custom presence fields (`undefined` removes one); sent like `update`. */
  updateCustom(patch: Record<string, unknown>) {
    const custom = { ...this.state.custom }
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) delete custom[k]
      else custom[k] = v
    }
    this.update({ custom })
  }

  /** Replaces my user (name, colour). */
  setUser(user: PresenceUser) {
    this.state = { ...this.state, user }
    this.update({})
  }

  private flush() {
    this.timer = null
    this.lastSent = Date.now()
    this.awareness.setLocalState(this.state)
  }

  /** Everyone else; the same array until something changes. */
  others(): Peer[] {
    return this.list
  }

  /** Calls `cb` with the others whenever they change. */
  subscribe(cb: (others: Peer[]) => void): Unsubscribe {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }

  /** The room's socket went down: keep the others, marked stale, for the grace period. */
  markDisconnected() {
    // Only the first failure of an outage starts the grace period: every failed attempt
    // reports again, and restarting the timer each time would keep stale peers for good.
    if (!this.connected || this.destroyed) return
    this.connected = false
    let changed = false
    for (const [id, p] of this.peers) {
      if (!p.stale) {
        this.peers.set(id, { ...p, stale: true })
        changed = true
      }
    }
    if (changed) this.emit()
    if (this.staleTimer) clearTimeout(this.staleTimer)
    this.staleTimer = setTimeout(() => this.dropStale(), this.staleGraceMs)
  }

  /** The room synced again: whoever did not come back within the grace period is dropped. */
  markConnected() {
    this.connected = true
  }

  private dropStale() {
    this.staleTimer = null
    let changed = false
    for (const [id, p] of this.peers) {
      if (p.stale) {
        this.peers.delete(id)
        changed = true
      }
    }
    if (changed) this.emit()
  }

  private onChange = ({ removed }: { removed: number[] }) => {
    if (!this.connected) {
      // y-websocket drops remote states on disconnect and bumps their clocks, so the same
      // states re-sent after the reconnect would be ignored until each peer renews (15 s).
      // Forgetting their clocks lets them through at once.
      // After the provider's own listener, which still reads them to encode the removal.
      const gone = removed.filter((id) => id !== this.awareness.clientID)
      if (gone.length > 0) {
        queueMicrotask(() => {
          for (const id of gone) if (!this.awareness.states.has(id)) this.awareness.meta.delete(id)
        })
      }
    }
    const states = this.awareness.getStates()
    const seen = new Set<number>()
    let changed = false
    for (const [clientId, s] of states) {
      if (clientId === this.awareness.clientID) continue
      const st = s as Partial<PresenceState>
      if (!st || typeof st !== 'object' || !st.user || typeof st.user.name !== 'string') continue
      seen.add(clientId)
      const prev = this.peers.get(clientId)
      const next: Peer = {
        clientId,
        user: st.user,
        cursor: st.cursor ?? null,
        selected: st.selected ?? null,
        drag: st.drag ?? null,
        editing: st.editing ?? null,
        custom: typeof st.custom === 'object' && st.custom !== null && !Array.isArray(st.custom) ? st.custom : {},
        stale: false,
      }
      if (!prev || prev.stale || JSON.stringify(prev) !== JSON.stringify(next)) {
        this.peers.set(clientId, next)
        changed = true
      }
    }
    for (const [clientId, p] of this.peers) {
      if (seen.has(clientId)) continue
      // Gone while I am connected: they left. Gone while I am not: keep them, stale.
      if (this.connected) {
        this.peers.delete(clientId)
        changed = true
      } else if (!p.stale) {
        this.peers.set(clientId, { ...p, stale: true })
        changed = true
      }
    }
    if (changed) this.emit()
  }

  private emit() {
    this.list = [...this.peers.values()]
    for (const l of [...this.listeners]) l(this.list)
  }

  /** Stops timers and listening. */
  destroy() {
    this.destroyed = true
    if (this.timer) clearTimeout(this.timer)
    if (this.staleTimer) clearTimeout(this.staleTimer)
    this.awareness.off('change', this.onChange)
  }
}
