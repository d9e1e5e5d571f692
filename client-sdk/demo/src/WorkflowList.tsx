import { useCallback, useEffect, useState } from 'react'
import type { Schemas } from '@resonant/client'
import { errorText, shareLink, timeAgo, useDemo, hrefFor } from './nav'

type Workflow = Schemas['Workflow']

/** The first page of the app: my workflows, by last change, with create, rename, open and share. */
export function WorkflowList() {
  const { rest, navigate } = useDemo()
  const [workspace, setWorkspace] = useState<Schemas['Workspace'] | null>(null)
  const [workflows, setWorkflows] = useState<Workflow[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [name, setName] = useState('')
  const [creating, setCreating] = useState(false)

  const load = useCallback(async () => {
    try {
      const spaces = await rest.workspaces.list()
      const ws = spaces.items[0]
      if (!ws) throw new Error('You are in no workspace')
      setWorkspace(ws)
      const all: Workflow[] = []
      for await (const w of rest.all((cursor) => rest.workflows.list(ws.id, { cursor, limit: 100 }))) all.push(w)
      all.sort((a, b) => b.updatedAt - a.updatedAt)
      setWorkflows(all)
      setError(null)
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest])

  useEffect(() => {
    document.title = 'Workflows · Resonant'
    void load()
  }, [load])

  const create = async () => {
    if (!workspace) return
    setCreating(true)
    try {
      const wf = await rest.workflows.create(workspace.id, { name: name.trim() || 'Untitled workflow' })
      navigate(wf.id, { seed: true })
    } catch (e) {
      setError(errorText(e))
      setCreating(false)
    }
  }

  return (
    <div className="list-page" data-testid="workflow-list">
      <header className="list-head">
        <h1>Workflows</h1>
        {workspace && <span className="muted">{workspace.name}</span>}
      </header>
      <form
        className="create-row"
        onSubmit={(e) => {
          e.preventDefault()
          void create()
        }}
      >
        <input
          data-testid="new-workflow-name"
          placeholder="Name of the new workflow"
          maxLength={200}
          value={name}
          onChange={(e) => setName(e.target.value)}
        />
        <button type="submit" className="primary" data-testid="create-workflow" disabled={!workspace || creating}>
          {creating ? 'Creating…' : 'New workflow'}
        </button>
      </form>
      {error && (
        <p className="problem" data-testid="list-error">
          {error} <button onClick={() => void load()}>Retry</button>
        </p>
      )}
      {workflows === null && !error && <p className="muted">Loading…</p>}
      {workflows?.length === 0 && <p className="muted" data-testid="list-empty">No workflows yet: create the first one above.</p>}
      {workflows && workflows.length > 0 && (
        <table className="workflows">
          <thead>
            <tr>
              <th>Name</th>
              <th>Status</th>
              <th>Changed</th>
              <th>Versions</th>
              <th>Runs</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {workflows.map((w) => (
              <Row key={w.id} workflow={w} onRenamed={(u) => setWorkflows((l) => l?.map((x) => (x.id === u.id ? u : x)) ?? l)} />
            ))}
          </tbody>
        </table>
      )}
    </div>
  )
}

function Row({ workflow: w, onRenamed }: { workflow: Workflow; onRenamed: (w: Workflow) => void }) {
  const { navigate } = useDemo()
  return (
    <tr data-testid={`workflow-row-${w.id}`} data-name={w.name}>
      <td className="name-cell">
        <a
          href={hrefFor(w.id)}
          data-testid={`open-${w.id}`}
          onClick={(e) => {
            if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return
            e.preventDefault()
            navigate(w.id)
          }}
        >
          {w.name}
        </a>
      </td>
      <td><span className="badge">{w.status}</span></td>
      <td className="muted small" title={new Date(w.updatedAt).toLocaleString()}>{timeAgo(w.updatedAt)}</td>
      <td className="muted small">{w.version || '—'}</td>
      <td className="muted small">{w.executionCount}</td>
      <td>
        <div className="row-actions">
          <RenameButton workflow={w} onRenamed={onRenamed} />
          <CopyLinkButton workflowId={w.id} />
        </div>
      </td>
    </tr>
  )
}

/** Rename in place: the button turns into an input; Enter saves, Escape cancels. */
export function RenameButton({ workflow, onRenamed, compact }: { workflow: Workflow; onRenamed: (w: Workflow) => void; compact?: boolean }) {
  const { rest } = useDemo()
  const [draft, setDraft] = useState<string | null>(null)
  const [error, setError] = useState<string | null>(null)
  const save = async () => {
    const name = draft?.trim()
    if (!name || name === workflow.name) {
      setDraft(null)
      return
    }
    try {
      onRenamed(await rest.workflows.update(workflow.id, { name }))
      setDraft(null)
      setError(null)
    } catch (e) {
      setError(errorText(e))
    }
  }
  if (draft === null) {
    return (
      <button data-testid={`rename-${workflow.id}`} title="Rename" onClick={() => setDraft(workflow.name)}>
        {compact ? '✎' : 'Rename'}
      </button>
    )
  }
  return (
    <span className="rename">
      <input
        autoFocus
        data-testid="rename-input"
        maxLength={200}
        value={draft}
        onChange={(e) => setDraft(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === 'Enter') void save()
          else if (e.key === 'Escape') setDraft(null)
        }}
        onBlur={() => void save()}
      />
      {error && <span className="problem">{error}</span>}
    </span>
  )
}

/** Copies the workflow's link; shows it when the clipboard is not available. */
export function CopyLinkButton({ workflowId }: { workflowId: string }) {
  const [copied, setCopied] = useState<'no' | 'yes' | 'show'>('no')
  const link = shareLink(workflowId)
  useEffect(() => {
    if (copied !== 'yes') return
    const t = setTimeout(() => setCopied('no'), 1500)
    return () => clearTimeout(t)
  }, [copied])
  return (
    <>
      <button
        data-testid={`copy-link-${workflowId}`}
        data-link={link}
        title={link}
        onClick={() => {
          navigator.clipboard?.writeText(link).then(
            () => setCopied('yes'),
            () => setCopied('show'),
          ) ?? setCopied('show')
        }}
      >
        {copied === 'yes' ? 'Copied' : 'Copy link'}
      </button>
      {copied === 'show' && <input className="link-field" readOnly value={link} onFocus={(e) => e.target.select()} />}
    </>
  )
}
