import type { PresenceUser } from '@resonant/client'

const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Badger', 'Falcon', 'Marten', 'Ibis', 'Puffin', 'Gecko', 'Koala']
const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#c2185b', '#6d4c41', '#0097a7', '#7cb342']
const KEY = 'resonant-demo-user'

function randomId(): string {
  return typeof crypto !== 'undefined' && 'randomUUID' in crypto
    ? crypto.randomUUID()
    : Math.random().toString(36).slice(2) + Date.now().toString(36)
}

/** My presence identity: random, kept for this tab in sessionStorage; `?name=` overrides the name. */
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
  const name = new URLSearchParams(location.search).get('name')
  if (name) user = { ...user, name }
  try {
    sessionStorage.setItem(KEY, JSON.stringify(user))
  } catch {
    // storage unavailable: the identity lasts for this page only
  }
  return user
}
