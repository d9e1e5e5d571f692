import { StrictMode, useCallback, useEffect, useMemo, useState } from 'react'
import { createRoot } from 'react-dom/client'
import { ResonantClient, RestClient } from '@resonant/client'
import '@xyflow/react/dist/style.css'
import './styles.css'
import { App } from './App'
import { identity } from './identity'
import { renderStats } from './shared'
import { currentRoute, DemoContext, errorText, hrefFor, type DemoContextValue, type Route } from './nav'
import { WorkflowList } from './WorkflowList'

declare global {
  interface Window {
    __resonant?: { client: ResonantClient; room?: import('@resonant/client').Room; stats: typeof renderStats }
  }
}

const client = new ResonantClient({ url: location.origin, getToken: () => null, user: identity(), guardUnload: true })
const rest = new RestClient({ url: location.origin, getToken: () => null })
window.__resonant = { client, stats: renderStats }

/** The list or one workflow's editor, as the URL says; navigation without reloading the page. */
function Root() {
  const [route, setRoute] = useState<Route>(currentRoute)
  const [newError, setNewError] = useState<string | null>(null)

  useEffect(() => {
    const onPop = () => setRoute(currentRoute())
    window.addEventListener('popstate', onPop)
    return () => window.removeEventListener('popstate', onPop)
  }, [])

  const navigate = useCallback<DemoContextValue['navigate']>((workflowId, options) => {
    const href = hrefFor(workflowId)
    if (options?.replace) history.replaceState(null, '', href)
    else history.pushState(null, '', href)
    setRoute(workflowId ? { view: 'editor', workflowId, seed: !!options?.seed } : { view: 'list' })
  }, [])

  // `/?new`: a new workflow with the starter graph, put in the URL in place of `new`.
  useEffect(() => {
    if (route.view !== 'new') return
    let cancelled = false
    rest.workspaces
      .list()
      .then(async (spaces) => {
        const ws = spaces.items[0]
        if (!ws) throw new Error('no workspace')
        const wf = await rest.workflows.create(ws.id, { name: 'Demo workflow' })
        if (!cancelled) navigate(wf.id, { seed: true, replace: true })
      })
      .catch((e: unknown) => !cancelled && setNewError(errorText(e)))
    return () => {
      cancelled = true
    }
  }, [route, navigate])

  const ctx = useMemo(() => ({ rest, navigate }), [navigate])
  let view
  if (route.view === 'editor') {
    view = <App key={route.workflowId} client={client} workflowId={route.workflowId} seed={route.seed} />
  } else if (route.view === 'list') {
    view = <WorkflowList />
  } else {
    view = newError ? <div className="boot error">Could not create a workflow: {newError}</div> : <div className="boot">Creating a workflow…</div>
  }
  return <DemoContext.Provider value={ctx}>{view}</DemoContext.Provider>
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <Root />
  </StrictMode>,
)
