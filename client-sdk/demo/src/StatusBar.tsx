import type { Peer, SaveStatus } from '@resonant/client'
import { jsonEqual, useMyPresence, useOthers, useRoomError, useSaveStatus, useStatus } from '@resonant/react'

const SAVE_TEXT: Record<SaveStatus, string> = {
  saved: 'Saved',
  saving: 'Saving…',
  offline: 'Offline — unsaved changes',
  local: 'Offline — stored on this device',
  unknown: 'Save status unknown',
}

/** Who is here, without cursors: the avatars do not re-render when a cursor moves. */
const selectPeople = (others: Peer[]) =>
  others.map((p) => ({ clientId: p.clientId, name: p.user.name, color: p.user.color, stale: p.stale }))

function initials(name: string) {
  return name
    .split(/\s+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((w) => w[0]!.toUpperCase())
    .join('')
}

export function StatusBar() {
  const status = useStatus()
  const save = useSaveStatus()
  const error = useRoomError()
  const others = useOthers(selectPeople, jsonEqual)
  const [me] = useMyPresence()
  return (
    <div className="status">
      <span className={`pill conn-${status}`} data-testid="connection-status" data-status={status}>
        {status}
      </span>
      {/* A room that stopped for good stores nothing: no "Saved" next to its error. */}
      {!error?.fatal && (
        <span className={`pill save-${save}`} data-testid="save-status" data-status={save}>
          {SAVE_TEXT[save]}
        </span>
      )}
      {error && (
        <span className="pill error" data-testid="room-error" data-code={error.code} title={error.message}>
          {error.message}
        </span>
      )}
      <div className="avatars">
        {others.map((p) => (
          <span
            key={p.clientId}
            className={`avatar${p.stale ? ' stale' : ''}`}
            style={{ background: p.color }}
            title={p.name}
            data-testid={`avatar-${p.name}`}
          >
            {initials(p.name)}
          </span>
        ))}
        <span className="avatar me" style={{ background: me.user.color }} title={`${me.user.name} (you)`} data-testid="my-avatar">
          {initials(me.user.name)}
        </span>
      </div>
    </div>
  )
}
