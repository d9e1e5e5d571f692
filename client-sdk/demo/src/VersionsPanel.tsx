import { useCallback, useEffect, useState } from 'react'
import type { Schemas } from '@resonant/client'
import { useBroadcastEvent, useEventListener, useRoom } from '@resonant/react'
import { errorText, isPanelEvent, timeAgo, useDemo } from './nav'

type Version = Schemas['VersionInfo']

/**
 * Version history: save the document as a named version, restore an older one, publish one
 * (the version the workflow's triggers run). Saving and restoring wait until my edits are
 * stored on the server first, so a version holds what I see. A restore reaches every editor
 * (mine too) as one remote change.
 */
export function VersionsPanel({ workflowId }: { workflowId: string }) {
  const { rest } = useDemo()
  const room = useRoom()
  const [versions, setVersions] = useState<Version[] | null>(null)
  const [name, setName] = useState('')
  const [busy, setBusy] = useState<string | null>(null)
  const [confirm, setConfirm] = useState<number | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [restored, setRestored] = useState<number | null>(null)
  const [published, setPublished] = useState<string | null>(null)

  const refresh = useCallback(async () => {
    try {
      const [page, wf] = await Promise.all([rest.versions.list(workflowId, { limit: 100 }), rest.workflows.get(workflowId)])
      setVersions(page.items)
      setPublished(wf.publishedVersionId ?? null)
    } catch (e) {
      setError(errorText(e))
    }
  }, [rest, workflowId])

  useEffect(() => {
    void refresh()
  }, [refresh])
  useEventListener((e) => {
    if (isPanelEvent(e, 'versions-changed')) void refresh()
  })
  const broadcast = useBroadcastEvent()

  const act = async (what: string, f: () => Promise<unknown>) => {
    setBusy(what)
    setError(null)
    try {
      await room.whenSaved()
      await f()
      broadcast({ kind: 'versions-changed' })
      await refresh()
    } catch (e) {
      setError(errorText(e))
    } finally {
      setBusy(null)
    }
  }

  const save = () =>
    act('save', async () => {
      await rest.versions.create(workflowId, { name: name.trim() || null })
      setName('')
      setRestored(null)
    })

  const restore = (v: number) =>
    act(`restore-${v}`, async () => {
      setConfirm(null)
      await rest.versions.restore(workflowId, v)
      // My older edits are not undoable across the restore (undo would mix two documents).
      room.undo.clear()
      setRestored(v)
    })

  const publish = (v: number) => act(`publish-${v}`, () => rest.versions.publish(workflowId, v))
  const unpublish = () => act('unpublish', () => rest.versions.unpublish(workflowId))

  return (
    <section className="panel versions" data-testid="versions-panel">
      <h2>Version history</h2>
      <p className="muted small">Triggers set to “published” run the published version; the others run the live draft.</p>
      <form
        className="inline-form"
        onSubmit={(e) => {
          e.preventDefault()
          void save()
        }}
      >
        <input
          data-testid="version-name"
          placeholder="Version name (optional)"
          maxLength={200}
          value={name}
          onChange={(e) => setName(e.target.value)}
        />
        <button type="submit" className="primary" data-testid="save-version" disabled={busy !== null}>
          {busy === 'save' ? 'Saving…' : 'Save version'}
        </button>
      </form>
      {error && <p className="problem" data-testid="versions-error">{error}</p>}
      {restored !== null && (
        <p className="muted small" data-testid="restored-note">
          Restored version {restored}. Undo does not reach past a restore; restore another version to go back.
        </p>
      )}
      {versions?.length === 0 && <p className="muted small">No saved versions yet.</p>}
      <ol className="version-list">
        {versions?.map((v) => (
          <li key={v.id} data-testid={`version-${v.version}`}>
            <div className="version-head">
              <span className="version-no">v{v.version}</span>
              <span className="version-name">{v.name || <span className="muted">Unnamed</span>}</span>
              {published === v.id && (
                <span className="badge status-completed" data-testid="published-badge">
                  published
                </span>
              )}
            </div>
            <div className="version-meta muted small" title={new Date(v.createdAt).toLocaleString()}>
              {timeAgo(v.createdAt)}
              {v.message ? ` · ${v.message}` : ''}
            </div>
            {confirm === v.version ? (
              <div className="confirm">
                <span className="small">Replace the workflow with v{v.version} for everyone?</span>
                <button className="primary" data-testid={`confirm-restore-${v.version}`} onClick={() => void restore(v.version)}>
                  Restore
                </button>
                <button onClick={() => setConfirm(null)}>Cancel</button>
              </div>
            ) : (
              <div className="comment-actions">
                <button data-testid={`restore-${v.version}`} disabled={busy !== null} onClick={() => setConfirm(v.version)}>
                  {busy === `restore-${v.version}` ? 'Restoring…' : 'Restore…'}
                </button>
                {published === v.id ? (
                  <button data-testid="unpublish" disabled={busy !== null} onClick={() => void unpublish()}>
                    {busy === 'unpublish' ? 'Unpublishing…' : 'Unpublish'}
                  </button>
                ) : (
                  <button data-testid={`publish-${v.version}`} disabled={busy !== null} onClick={() => void publish(v.version)}>
                    {busy === `publish-${v.version}` ? 'Publishing…' : 'Publish'}
                  </button>
                )}
              </div>
            )}
          </li>
        ))}
      </ol>
    </section>
  )
}
