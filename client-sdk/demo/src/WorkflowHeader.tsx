import { useEffect, useState } from 'react'
import type { Schemas } from '@resonant/client'
import { errorText, hrefFor, useDemo } from './nav'
import { CopyLinkButton, RenameButton } from './WorkflowList'

/** The editor's title: back to the list, the workflow's name (renamable) and its share link. */
export function WorkflowHeader({ workflowId }: { workflowId: string }) {
  const { rest, navigate } = useDemo()
  const [workflow, setWorkflow] = useState<Schemas['Workflow'] | null>(null)
  const [error, setError] = useState<string | null>(null)

  useEffect(() => {
    let cancelled = false
    rest.workflows.get(workflowId).then(
      (w) => !cancelled && setWorkflow(w),
      (e: unknown) => !cancelled && setError(errorText(e)),
    )
    return () => {
      cancelled = true
    }
  }, [rest, workflowId])

  useEffect(() => {
    document.title = `${workflow?.name ?? 'Workflow'} · Resonant`
  }, [workflow?.name])

  return (
    <div className="wf-header">
      <a
        className="back"
        href={hrefFor(null)}
        data-testid="back-to-list"
        title="All workflows"
        onClick={(e) => {
          if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return
          e.preventDefault()
          navigate(null)
        }}
      >
        ← Workflows
      </a>
      <span className="wf-name" data-testid="workflow-name" title={workflow?.name ?? error ?? ''}>
        {workflow?.name ?? (error ? '(name unavailable)' : '…')}
      </span>
      {workflow && <RenameButton compact workflow={workflow} onRenamed={setWorkflow} />}
      <CopyLinkButton workflowId={workflowId} />
    </div>
  )
}
