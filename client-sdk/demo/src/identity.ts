import type { PresenceUser } from '@resonant/client'

const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Badger', 'Falcon', 'Marten', 'Ibis', 'Puffin', 'Gecko', 'Koala']
const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#c2185b', '#6d4c41', '#0097a7', '#7cb342']
const KEY = 'resonant-demo-user'
const DEVICE_KEY = 'resonant-demo-device'

function randomId(): string {
  return typeof crypto !== 'undefined' && 'randomUUID' in crypto
    ? crypto.randomUUID()
    : Math.random().toString(36).slice(2) + Date.now().toString(36)
}

/**
 * My presence identity: a random name and colour kept for this tab in sessionStorage, an id kept
 * for this browser in localStorage; `?name=` overrides the name.
 */
export function identity(): PresenceUser {
  let user: PresenceUser | null = null
  try {
    const stored = sessionStorage.getItem(KEY)
    if (stored) user = JSON.parse(stored) as PresenceUser
  } catch {
    user = null
  }
  if (!user || typeof user.name !== 'string' || typeof user.color !== 'string') {
    const pick = <T,>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)]
    user = { id: randomId(), name: `${pick(ANIMALS)} ${1 + Math.floor(Math.random() * 99)}`, color: pick(COLORS) }
  }
  // The id is this browser's, not this tab's: rooms keep their offline copy per user id, so
  // edits made offline in a tab that was closed open again in the next one.
  try {
    const device = localStorage.getItem(DEVICE_KEY)
    if (device) user = { ...user, id: device }
    else localStorage.setItem(DEVICE_KEY, user.id)
  } catch {
    // storage unavailable: the id lasts for this tab
  }
  const name = new URLSearchParams(location.search).get('name')
  if (name) user = { ...user, name }
  try {
    sessionStorage.setItem(KEY, JSON.stringify(user))
  } catch {
    // storage unavailable: the identity lasts for this page only
  }
  return user
}
