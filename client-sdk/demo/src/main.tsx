import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import { ResonantClient } from '@resonant/client'
import '@xyflow/react/dist/style.css'
import './styles.css'
import { App } from './App'
import { identity } from './identity'
import { renderStats } from './shared'

declare global {
  interface Window {
    __resonant?: { client: ResonantClient; room?: import('@resonant/client').Room; stats: typeof renderStats }
  }
}

async function api<T>(path: string, init?: RequestInit): Promise<T> {
  const res = await fetch(path, {
    ...init,
    headers: { 'content-type': 'application/json', ...(init?.headers ?? {}) },
  })
  if (!res.ok) throw new Error(`${init?.method ?? 'GET'} ${path}: ${res.status} ${await res.text()}`)
  return (await res.json()) as T
}

/** The workflow in `?workflow=`, or a new "Demo workflow" in my first workspace (then put in the URL). */
async function resolveWorkflow(): Promise<{ id: string; created: boolean }> {
  const params = new URLSearchParams(location.search)
  const existing = params.get('workflow')
  if (existing) return { id: existing, created: false }
  const workspaces = await api<{ items: { id: string }[] }>('/api/v1/workspaces')
  const ws = workspaces.items[0]
  if (!ws) throw new Error('no workspace')
  const wf = await api<{ id: string }>(`/api/v1/workspaces/${encodeURIComponent(ws.id)}/workflows`, {
    method: 'POST',
    body: JSON.stringify({ name: 'Demo workflow' }),
  })
  params.set('workflow', wf.id)
  history.replaceState(null, '', `${location.pathname}?${params}${location.hash}`)
  return { id: wf.id, created: true }
}

const root = createRoot(document.getElementById('root')!)
root.render(<div className="boot">Loading…</div>)

resolveWorkflow().then(
  ({ id, created }) => {
    const client = new ResonantClient({ url: location.origin, getToken: () => null, user: identity(), guardUnload: true })
    window.__resonant = { client, stats: renderStats }
    root.render(
      <StrictMode>
        <App client={client} workflowId={id} seed={created} />
      </StrictMode>,
    )
  },
  (e: unknown) => {
    root.render(<div className="boot error">Could not open a workflow: {String(e instanceof Error ? e.message : e)}</div>)
  },
)
