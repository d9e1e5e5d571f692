import { useState } from 'react'
import type { FieldSpec } from '@resonant/client'

/**
 * Form editors for the block schema's structured fields, in place of raw JSON: a retry policy
 * (its sub-fields from the schema), a switch's cases (handle + expression rows) and a map of
 * strings (a webhook's headers). Each writes the whole value on a committed change (blur or
 * Enter), like the inspector's other inputs; a value they cannot show falls back to JSON.
 */

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)

/** A text input that keeps a draft while focused and commits it on blur or Enter. */
function CommitInput(props: { value: string; onCommit: (s: string) => void; testid?: string; placeholder?: string; className?: string; type?: string; min?: number; max?: number; step?: number | string }) {
  const { value, onCommit, testid, ...rest } = props
  const [draft, setDraft] = useState<string | null>(null)
  const commit = () => {
    if (draft !== null && draft !== value) onCommit(draft)
    setDraft(null)
  }
  return (
    <input
      {...rest}
      data-testid={testid}
      value={draft ?? value}
      onChange={(e) => setDraft(e.target.value)}
      onBlur={commit}
      onKeyDown={(e) => {
        if (e.key === 'Enter') commit()
      }}
    />
  )
}

/** Drops absent keys; an empty object is "not set". */
function compact(o: Json): Json | undefined {
  const out = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))
  return Object.keys(out).length ? out : undefined
}

export function RetryEditor({ testid, spec, value, onChange }: { testid: string; spec: FieldSpec; value: unknown; onChange: (v: unknown) => void }) {
  const fields = (spec as FieldSpec & { fields?: Record<string, FieldSpec> }).fields ?? {}
  const current = isObject(value) ? value : {}
  const set = (name: string, v: unknown) => onChange(compact({ ...current, [name]: v }))
  return (
    <div className="structured retry" data-testid={testid}>
      {Object.entries(fields).map(([name, f]) => {
        const v = current[name]
        if (f.kind === 'stringArray' && f.enum) {
          const chosen = Array.isArray(v) ? (v as string[]) : Array.isArray(f.default) ? (f.default as string[]) : []
          return (
            <fieldset key={name} className="sub checks" title={f.help}>
              <legend>{f.label ?? name}</legend>
              {f.enum.map((opt) => (
                <label key={opt} className="check">
                  <input
                    type="checkbox"
                    data-testid={`${testid}-${name}-${opt}`}
                    checked={chosen.includes(opt)}
                    onChange={(e) => set(name, e.target.checked ? [...chosen, opt] : chosen.filter((x) => x !== opt))}
                  />
                  {opt}
                </label>
              ))}
            </fieldset>
          )
        }
        return (
          <label key={name} className="sub" title={f.help}>
            <span>{f.label ?? name}</span>
            <CommitInput
              testid={`${testid}-${name}`}
              type="number"
              min={f.min}
              max={f.max}
              step={f.kind === 'integer' ? 1 : 'any'}
              placeholder={f.default !== undefined ? String(f.default) : undefined}
              value={typeof v === 'number' ? String(v) : ''}
              onCommit={(s) => {
                const n = Number(s)
                set(name, s.trim() === '' || !Number.isFinite(n) ? undefined : f.kind === 'integer' ? Math.round(n) : n)
              }}
            />
          </label>
        )
      })}
    </div>
  )
}

type Case = { handle?: unknown; expression?: unknown }

export function CasesEditor({ testid, value, onChange }: { testid: string; value: unknown; onChange: (v: unknown) => void }) {
  const cases: Case[] = Array.isArray(value) ? (value as Case[]) : []
  const write = (next: Case[]) => onChange(next.length ? next : undefined)
  const setAt = (i: number, patch: Case) => write(cases.map((c, j) => (j === i ? { ...c, ...patch } : c)))
  return (
    <div className="structured cases" data-testid={testid}>
      {cases.map((c, i) => (
        <div key={i} className="row">
          <CommitInput
            testid={`${testid}-handle-${i}`}
            className="handle-name"
            placeholder="handle"
            value={typeof c.handle === 'string' ? c.handle : ''}
            onCommit={(s) => setAt(i, { handle: s.trim() })}
          />
          <CommitInput
            testid={`${testid}-expression-${i}`}
            className="mono"
            placeholder="expression, e.g. upstream | length > 100"
            value={typeof c.expression === 'string' ? c.expression : ''}
            onCommit={(s) => setAt(i, { expression: s })}
          />
          <button type="button" title="Remove this case" data-testid={`${testid}-remove-${i}`} onClick={() => write(cases.filter((_, j) => j !== i))}>
            ×
          </button>
        </div>
      ))}
      <button
        type="button"
        data-testid={`${testid}-add`}
        onClick={() => write([...cases, { handle: `case${cases.length + 1}`, expression: 'true' }])}
      >
        + Case
      </button>
      {cases.length > 0 && <small className="muted">Taken in order; none holds: the default handle.</small>}
    </div>
  )
}

/** Whether a value can be shown as name → string rows. */
export function isStringMap(v: unknown): boolean {
  return v === undefined || (isObject(v) && Object.values(v).every((x) => typeof x === 'string'))
}

export function StringMapEditor({ testid, value, onChange, keyPlaceholder = 'name' }: { testid: string; value: unknown; onChange: (v: unknown) => void; keyPlaceholder?: string }) {
  const entries = Object.entries(isObject(value) ? value : {}) as [string, string][]
  // A new row with no name yet lives here until it gets one.
  const [pending, setPending] = useState(false)
  const write = (next: [string, string][]) => onChange(next.length ? Object.fromEntries(next) : undefined)
  return (
    <div className="structured map" data-testid={testid}>
      {entries.map(([k, v], i) => (
        <div key={k} className="row">
          <CommitInput
            testid={`${testid}-key-${i}`}
            placeholder={keyPlaceholder}
            value={k}
            onCommit={(s) => {
              const name = s.trim()
              if (!name || entries.some(([x], j) => x === name && j !== i)) return
              write(entries.map((e, j) => (j === i ? [name, e[1]] : e)))
            }}
          />
          <CommitInput testid={`${testid}-value-${i}`} className="mono" placeholder="value (template)" value={v} onCommit={(s) => write(entries.map((e, j) => (j === i ? [e[0], s] : e)))} />
          <button type="button" title="Remove" data-testid={`${testid}-remove-${i}`} onClick={() => write(entries.filter((_, j) => j !== i))}>
            ×
          </button>
        </div>
      ))}
      {pending ? (
        <div className="row">
          <CommitInput
            testid={`${testid}-new-key`}
            placeholder={`${keyPlaceholder}, then Enter`}
            value=""
            onCommit={(s) => {
              const name = s.trim()
              setPending(false)
              if (name && !entries.some(([x]) => x === name)) write([...entries, [name, '']])
            }}
          />
        </div>
      ) : (
        <button type="button" data-testid={`${testid}-add`} onClick={() => setPending(true)}>
          + Add
        </button>
      )}
    </div>
  )
}
