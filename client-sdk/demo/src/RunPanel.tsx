import { useEffect, useRef, useState } from 'react'
import { ResonantError, type ExecutionEvent } from '@resonant/client'
import { useExecution, useRunWorkflow } from '@resonant/react'
import { useCurrentExecution } from './shared'

const DEFAULT_INPUT = '{\n  "topic": "rivers"\n}'

function describeError(e: Error): string[] {
  if (e instanceof ResonantError && Array.isArray(e.details.problems)) {
    return (e.details.problems as Record<string, unknown>[]).map((p) => {
      const where = p.block ?? p.connection
      const msg = p.message ?? ''
      return `${String(p.code)}${where ? ` (${String(where)})` : ''}${msg ? `: ${String(msg)}` : ''}`
    })
  }
  return []
}

export function RunControls() {
  const { run, starting, error } = useRunWorkflow()
  const current = useCurrentExecution()
  const state = useExecution(current)
  const [input, setInput] = useState(DEFAULT_INPUT)
  const [inputError, setInputError] = useState<string | null>(null)
  const active = state && (state.status === 'running' || state.status === 'pending')

  const start = () => {
    let parsed: unknown
    try {
      parsed = input.trim() ? JSON.parse(input) : {}
    } catch (e) {
      setInputError(`Input is not JSON: ${(e as Error).message}`)
      return
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      setInputError('Input must be a JSON object')
      return
    }
    setInputError(null)
    void run({ input: parsed as Record<string, unknown> })
  }

  return (
    <section className="panel run">
      <h2>Run</h2>
      <label className="field">
        <span>Input (JSON)</span>
        <textarea data-testid="run-input" className="mono" rows={3} value={input} onChange={(e) => setInput(e.target.value)} />
      </label>
      <div className="run-buttons">
        <button data-testid="run" className="primary" onClick={start} disabled={starting}>
          {starting ? 'Starting…' : 'Run'}
        </button>
        {active && current && (
          <button data-testid="cancel" onClick={() => void current.cancel().catch((e: unknown) => console.error(e))}>
            Cancel
          </button>
        )}
        <span className={`badge status-${state?.status ?? 'idle'}`} data-testid="execution-status">
          {state?.status ?? 'idle'}
        </span>
      </div>
      {state && state.status !== 'running' && state.status !== 'pending' && (
        <p className="muted small">
          {state.durationMs !== undefined && `${state.durationMs} ms`}
          {state.tokens !== undefined && ` · ${state.tokens} tokens`}
          {state.costUsd !== undefined && state.costUsd > 0 && ` · $${state.costUsd.toFixed(4)}`}
          {state.error && <span className="problem"> · {state.error}</span>}
        </p>
      )}
      {inputError && <p className="problem">{inputError}</p>}
      {error && (
        <div className="problem" data-testid="run-error">
          {error.message}
          <ul>
            {describeError(error).map((p, i) => (
              <li key={i}>{p}</li>
            ))}
          </ul>
        </div>
      )}
    </section>
  )
}

function summary(e: ExecutionEvent): string {
  switch (e.type) {
    case 'block.delta':
      return JSON.stringify(e.text)
    case 'block.completed':
      return e.output !== undefined ? JSON.stringify(e.output).slice(0, 120) : ''
    case 'block.failed':
    case 'execution.failed':
      return String(e.error ?? '')
    case 'block.waiting':
      return String(e.reason ?? '')
    case 'block.retrying':
      return String(e.reason ?? '')
    case 'execution.completed':
      return JSON.stringify(e.outputs ?? {}).slice(0, 160)
    default:
      return ''
  }
}

/** The current execution's events, newest last. */
export function RunLog() {
  const current = useCurrentExecution()
  const state = useExecution(current)
  const list = useRef<HTMLOListElement>(null)
  const events = state?.events ?? []
  useEffect(() => {
    const el = list.current
    if (el) el.scrollTop = el.scrollHeight
  }, [events.length])
  return (
    <section className="panel log">
      <h2>
        Run log {current && <span className="muted small">· {current.id}</span>}
      </h2>
      <ol className="run-log" data-testid="run-log" ref={list}>
        {events.map((e) => (
          <li key={e.seq} data-testid="run-log-entry" data-type={e.type}>
            <span className="seq">{e.seq}</span>
            <span className="etype">{e.type}</span>
            {e.blockId && <span className="eblock">{e.scope ? `${e.scope}/` : ''}{e.blockId}</span>}
            <span className="edetail">{summary(e)}</span>
          </li>
        ))}
      </ol>
    </section>
  )
}
