import { memo, useEffect, useRef, useState } from 'react'
import { Handle, Position, useUpdateNodeInternals, type NodeProps, type NodeTypes } from '@xyflow/react'
import { ERROR_HANDLE, specOf, type BlockRunState } from '@resonant/client'
import { useBlockExecution, type BlockNode } from '@resonant/react'
import { BLOCK_TYPES, renderStats, useCurrentExecution } from './shared'
import { useCommentCount } from './commentCounts'

/** The schema's handles; "" is a block's default handle (no id: connections carry no handle). */
function handles(names: string[] | undefined): (string | null)[] {
  return (names ?? []).map((n) => (n === '' ? null : n))
}

/**
 * A switch (a condition with `cases`) leaves through its cases' handles and `casesOutputs`
 * (default); a block whose `onError` is `route` also through its error handle, last.
 */
function outputHandles(
  type: string,
  config: Record<string, unknown>,
  spec: { outputs: string[]; casesOutputs?: string[] } | undefined,
): string[] {
  let out = spec?.outputs ?? []
  if (type === 'condition' && Array.isArray(config.cases)) {
    const names = (config.cases as { handle?: unknown }[])
      .map((c) => (typeof c?.handle === 'string' ? c.handle : null))
      .filter((h): h is string => !!h)
    out = [...names, ...(spec?.casesOutputs ?? ['default'])]
  }
  return config.onError === 'route' ? [...out, ERROR_HANDLE] : out
}

function preview(value: unknown): string {
  if (value === undefined) return ''
  const s = typeof value === 'string' ? value : JSON.stringify(value)
  return s.length > 160 ? `${s.slice(0, 160)}…` : s
}

function HandleColumn({ ids, type }: { ids: (string | null)[]; type: 'source' | 'target' }) {
  const position = type === 'target' ? Position.Left : Position.Right
  return (
    <>
      {ids.map((id, i) => {
        const top = `${((i + 1) / (ids.length + 1)) * 100}%`
        return (
          <div key={id ?? '_'}>
            <Handle
              type={type}
              position={position}
              id={id ?? undefined}
              style={{ top }}
              className={id === ERROR_HANDLE && type === 'source' ? 'error-handle' : undefined}
              data-testid={id ? `handle-${type}-${id}` : undefined}
            />
            {id && (
              <span className={`handle-label ${type}${id === ERROR_HANDLE ? ' error' : ''}`} style={{ top }}>
                {id}
              </span>
            )}
          </div>
        )
      })}
    </>
  )
}

function Decision({ blockId }: { blockId: string }) {
  const execution = useCurrentExecution()
  const [busy, setBusy] = useState(false)
  if (!execution) return null
  const decide = (approved: boolean) => {
    setBusy(true)
    const p = approved ? execution.approve(blockId) : execution.reject(blockId)
    p.catch((e: unknown) => console.error('decision failed', e)).finally(() => setBusy(false))
  }
  return (
    <div className="decision nodrag">
      <button data-testid={`approve-${blockId}`} className="approve" disabled={busy} onClick={() => decide(true)}>
        Approve
      </button>
      <button data-testid={`reject-${blockId}`} className="reject" disabled={busy} onClick={() => decide(false)}>
        Reject
      </button>
    </div>
  )
}

function RunState({ blockId, isAi, state }: { blockId: string; isAi: boolean; state: BlockRunState | undefined }) {
  const status = state?.status ?? 'idle'
  return (
    <div className="run-state">
      {/* Idle (no run yet) is said by nothing at all; the element stays for the tests to read. */}
      <span
        className={`badge status-${status}`}
        data-testid={`block-state-${blockId}`}
        hidden={status === 'idle'}
      >
        {status}
        {state && state.attempt > 1 ? ` (attempt ${state.attempt})` : ''}
      </span>
      {(isAi || state?.text) && (
        <div className="block-text nowheel" data-testid={`block-text-${blockId}`}>
          {state?.text ?? ''}
        </div>
      )}
      {state?.status === 'completed' && state.output !== undefined && !isAi && (
        <div className="block-output" data-testid={`block-output-${blockId}`}>
          {preview(state.output)}
        </div>
      )}
      {state?.error && <div className="block-error">{state.error}</div>}
      {state?.waiting && (
        <div className="waiting">
          {state.waiting.reason === 'approval'
            ? state.waiting.message || 'Waiting for approval'
            : `Waiting${state.waiting.until ? ` until ${new Date(state.waiting.until).toLocaleTimeString()}` : ''}`}
        </div>
      )}
      {state?.status === 'waiting' && state.waiting?.reason === 'approval' && <Decision blockId={blockId} />}
    </div>
  )
}

/** One block on the canvas: label, type, the schema's handles and its live state in the current execution. */
export const BlockNodeView = memo(function BlockNodeView({ id, data, selected }: NodeProps<BlockNode>) {
  renderStats.nodes++
  const execution = useCurrentExecution()
  const state = useBlockExecution(execution, id)
  const type = data.block.type
  const spec = specOf(type)
  const inputs = handles(spec?.handles.inputs)
  const outputs = handles(outputHandles(data.block.type, data.block.config, spec?.handles))
  const handleKey = JSON.stringify([inputs, outputs])
  const updateNodeInternals = useUpdateNodeInternals()
  // React Flow measures a node's handles when it mounts; re-measure only when they change
  // (a switch gained a case). Asking on mount too costs a pass over every node per node:
  // seconds for a workflow of a few hundred blocks.
  const measuredHandles = useRef(handleKey)
  useEffect(() => {
    if (measuredHandles.current === handleKey) return
    measuredHandles.current = handleKey
    updateNodeInternals(id)
  }, [id, handleKey, updateNodeInternals])
  const ring = data.draggedBy?.color ?? data.selectedBy[0]?.color
  const comments = useCommentCount(id)
  return (
    <div
      className={`block-node type-${type}${selected ? ' selected' : ''}${data.draggedBy ? ' remote-drag' : ''}`}
      data-testid={`node-${id}`}
      // Room for every handle, so their labels never overlap each other.
      style={{ minHeight: Math.max(inputs.length, outputs.length) * 22 + 12, ...(ring ? { boxShadow: `0 0 0 2px ${ring}` } : {}) }}
      title={data.draggedBy ? `${data.draggedBy.name} is moving this block` : undefined}
    >
      <HandleColumn ids={inputs} type="target" />
      {/* The error handler has no inputs; an edge drawn into it (which Run refuses) still needs
          an anchor to be seen and deleted. */}
      {type === 'errorHandler' && <Handle type="target" position={Position.Left} isConnectable={false} className="anchor-only" />}
      <div className="block-head">
        <span className="block-label">{data.label}</span>
        <span className="block-type">
          {comments > 0 && (
            <span className="comment-count" data-testid={`comment-count-${id}`} title={`${comments} open comment${comments > 1 ? 's' : ''}`}>
              <svg width="10" height="10" viewBox="0 0 16 16" aria-hidden="true">
                <path d="M2 2h12v9H7l-4 3v-3H2z" fill="currentColor" />
              </svg>{' '}
              {comments}
            </span>
          )}
          {spec?.label ?? type}
        </span>
      </div>
      {type === 'errorHandler' && <div className="block-note">Runs when the execution fails, with {'{error: {message, blockId}}'}</div>}
      {data.selectedBy.length > 0 && (
        <div className="selected-by">{data.selectedBy.map((u) => u.name).join(', ')}</div>
      )}
      <RunState blockId={id} isAi={type === 'ai'} state={state} />
      <HandleColumn ids={outputs} type="source" />
    </div>
  )
})

export const nodeTypes: NodeTypes = Object.fromEntries(BLOCK_TYPES.map((t) => [t, BlockNodeView])) as NodeTypes
