import { useCallback, useEffect, useState } from 'react'
import type { Block, Schemas } from '@resonant/client'
import { jsonEqual, useBlocks, useBroadcastEvent, useEventListener } from '@resonant/react'
import { errorText, isPanelEvent, timeAgo, useDemo } from './nav'

type Comment = Schemas['Comment']

const labelsOf = (blocks: Block[]) =>
  Object.fromEntries(blocks.map((b) => [b.id, typeof b.data.label === 'string' && b.data.label ? b.data.label : b.type]))

/**
 * Comments on the workflow and its blocks (REST). With one block selected the panel shows and
 * adds that block's comments; with none, every comment, each naming its block.
 */
export function CommentsPanel(props: { workflowId: string; blockId: string | undefined; onChanged?: () => void }) {
  const { workflowId, blockId, onChanged } = props
  const { rest } = useDemo()
  const labels = useBlocks(labelsOf, jsonEqual)
  const [comments, setComments] = useState<Comment[] | null>(null)
  const [draft, setDraft] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)

  const refresh = useCallback(async () => {
    try {
      const all: Comment[] = []
      for await (const c of rest.all((cursor) => rest.comments.list(workflowId, { cursor, limit: 100, blockId }))) all.push(c)
      all.sort((a, b) => a.createdAt - b.createdAt)
      setComments(all)
      setError(null)
      // What I see here and the cards' badges agree (others may have commented meanwhile).
      onChanged?.()
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest, workflowId, blockId, onChanged])

  useEffect(() => {
    setComments(null)
    void refresh()
    // Editors in the room announce their changes (below); REST-only writers do not, so look
    // again now and then while the panel is open.
    const t = setInterval(() => void refresh(), 15_000)
    return () => clearInterval(t)
  }, [refresh])
  useEventListener((e) => {
    if (isPanelEvent(e, 'comments-changed')) void refresh()
  })
  const broadcast = useBroadcastEvent()

  const run = async (f: () => Promise<unknown>) => {
    setBusy(true)
    try {
      await f()
      broadcast({ kind: 'comments-changed' })
      await refresh()
    } catch (e) {
      setError(errorText(e))
    } finally {
      setBusy(false)
    }
  }

  const add = () =>
    run(async () => {
      const content = draft.trim()
      if (!content) return
      await rest.comments.create(workflowId, { content, blockId: blockId ?? null })
      setDraft('')
    })

  const target = blockId ? `“${labels[blockId] ?? blockId}”` : 'this workflow'
  return (
    <section className="panel comments" data-testid="comments-panel" data-block={blockId ?? ''}>
      <h2>Comments</h2>
      <p className="muted small">
        {blockId ? `On the block ${target}.` : 'On the whole workflow. Select a block to see and add its comments.'}
      </p>
      {error && <p className="problem" data-testid="comments-error">{error}</p>}
      {comments === null && !error && <p className="muted small">Loading…</p>}
      {comments?.length === 0 && <p className="muted small" data-testid="no-comments">No comments yet.</p>}
      <ul className="comment-list">
        {comments?.map((c) => (
          <li key={c.id} data-testid="comment" data-id={c.id} data-block={c.blockId ?? ''} className={c.resolved ? 'resolved' : undefined}>
            <div className="comment-meta small muted">
              {!blockId && c.blockId && <span className="chip">{labels[c.blockId] ?? `${c.blockId} (deleted)`}</span>}
              <span title={new Date(c.createdAt).toLocaleString()}>{timeAgo(c.createdAt)}</span>
              {c.resolved && <span> · resolved</span>}
            </div>
            <div className="comment-text">{c.content}</div>
            <div className="comment-actions">
              <button
                className="small"
                disabled={busy}
                onClick={() => void run(() => rest.comments.update(c.id, { resolved: !c.resolved }))}
              >
                {c.resolved ? 'Reopen' : 'Resolve'}
              </button>
              <button
                className="small danger"
                data-testid={`delete-comment-${c.id}`}
                disabled={busy}
                onClick={() => void run(() => rest.comments.delete(c.id))}
              >
                Delete
              </button>
            </div>
          </li>
        ))}
      </ul>
      <form
        className="comment-form"
        onSubmit={(e) => {
          e.preventDefault()
          void add()
        }}
      >
        <textarea
          data-testid="comment-input"
          rows={2}
          maxLength={10000}
          placeholder={`Comment on ${target}`}
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) void add()
          }}
        />
        <button type="submit" className="primary" data-testid="add-comment" disabled={busy || !draft.trim()}>
          Comment
        </button>
      </form>
    </section>
  )
}
