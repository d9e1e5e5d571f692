import { createContext, useContext } from 'react'
import type { RestClient } from '@resonant/client'

/**
 * The demo's two views live in the URL, so a link opens the same thing: `/` is the workflow
 * list, `/?workflow=<id>` one workflow's editor, `/?new` creates a workflow and opens it.
 * Other parameters (`name`, for the demo identity) are kept as they are.
 */
export type Route = { view: 'list' } | { view: 'editor'; workflowId: string; seed: boolean } | { view: 'new' }

export function currentRoute(): Route {
  const params = new URLSearchParams(location.search)
  const id = params.get('workflow')
  if (id) return { view: 'editor', workflowId: id, seed: false }
  if (params.has('new')) return { view: 'new' }
  return { view: 'list' }
}

/** The address of a workflow's editor (the list's when `workflowId` is null), keeping other parameters. */
export function hrefFor(workflowId: string | null): string {
  const params = new URLSearchParams(location.search)
  params.delete('new')
  if (workflowId) params.set('workflow', workflowId)
  else params.delete('workflow')
  const q = params.toString()
  return `${location.pathname}${q ? `?${q}` : ''}`
}

/** The absolute link to share for a workflow (without my demo name). */
export function shareLink(workflowId: string): string {
  return `${location.origin}${location.pathname}?workflow=${encodeURIComponent(workflowId)}`
}

export interface DemoContextValue {
  rest: RestClient
  /** Shows a workflow's editor (`seed`: put the starter graph into it) or, with null, the list. */
  navigate: (workflowId: string | null, options?: { seed?: boolean; replace?: boolean }) => void
}

export const DemoContext = createContext<DemoContextValue | null>(null)

export function useDemo(): DemoContextValue {
  const v = useContext(DemoContext)
  if (!v) throw new Error('useDemo outside <DemoContext.Provider>')
  return v
}

/** A REST failure as one line for the screen. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}

export function timeAgo(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 60) return 'just now'
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 24) return `${h} h ago`
  return new Date(ms).toLocaleDateString()
}

/** Broadcast to the room's other editors when comments, versions or triggers change, so their panels reload at once. */
export type PanelEvent = { kind: 'comments-changed' } | { kind: 'versions-changed' } | { kind: 'triggers-changed' }

/** Whether a broadcast event is a {@link PanelEvent} of `kind`. */
export function isPanelEvent(e: unknown, kind: PanelEvent['kind']): boolean {
  return typeof e === 'object' && e !== null && (e as { kind?: unknown }).kind === kind
}
