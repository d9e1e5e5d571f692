import { useEffect, useState } from 'react'
import { blockSchema, checkConfig, specOf, type FieldSpec } from '@resonant/client'
import { useBlock, useRoom } from '@resonant/react'

/** Edits the selected block: its label and the config fields of its type (from the block schema). */
export function Inspector({ blockId, count }: { blockId: string | undefined; count: number }) {
  const room = useRoom()
  const block = useBlock(blockId ?? '')
  if (!blockId || !block) {
    return (
      <section className="panel inspector">
        <h2>Block</h2>
        <p className="muted">{count > 1 ? `${count} blocks selected.` : 'Select a block to edit it.'}</p>
      </section>
    )
  }
  const spec = specOf(block.type)
  const problems = checkConfig(block.type, block.config)
  const set = (name: string, value: unknown) => room.workflow.updateBlock(block.id, { config: { [name]: value } })
  return (
    <section className="panel inspector" data-testid="inspector">
      <h2>
        {spec?.label ?? block.type} <span className="muted">· {block.id}</span>
      </h2>
      {spec?.description && <p className="muted small">{spec.description}</p>}
      <label className="field">
        <span>Label</span>
        <input
          data-testid="field-label"
          value={typeof block.data.label === 'string' ? block.data.label : ''}
          onChange={(e) => room.workflow.updateBlock(block.id, { data: { label: e.target.value } })}
        />
      </label>
      {[...Object.entries(spec?.fields ?? {}), ...Object.entries(commonFields())].map(([name, f]) => (
        <Field
          key={`${block.id}:${name}`}
          name={name}
          spec={f}
          value={block.config[name]}
          problem={problems.find((p) => p.field === name)?.message}
          onChange={(v) => set(name, v)}
        />
      ))}
      <button className="danger" data-testid="inspector-delete" onClick={() => room.workflow.removeBlock(block.id)}>
        Delete block
      </button>
    </section>
  )
}

/** Fields every block type takes (retry, timeoutMs), when the schema lists them. */
function commonFields(): Record<string, FieldSpec> {
  return ((blockSchema as unknown as { commonFields?: Record<string, FieldSpec> }).commonFields ?? {})
}

interface FieldProps {
  name: string
  spec: FieldSpec
  value: unknown
  problem?: string
  onChange: (v: unknown) => void
}

function Field({ name, spec, value, problem, onChange }: FieldProps) {
  const label = spec.label ?? name
  return (
    <label className={`field${problem ? ' invalid' : ''}`}>
      <span>
        {label}
        {spec.required && <em className="req"> *</em>}
      </span>
      <FieldInput name={name} spec={spec} value={value} onChange={onChange} />
      {spec.help && <small className="muted">{spec.help}</small>}
      {problem && <small className="problem">{problem}</small>}
    </label>
  )
}

function FieldInput({ name, spec, value, onChange }: Omit<FieldProps, 'problem'>) {
  const testid = `field-${name}`
  switch (spec.kind) {
    case 'template':
      return (
        <textarea
          data-testid={testid}
          rows={3}
          className="mono"
          value={typeof value === 'string' ? value : ''}
          placeholder={typeof spec.default === 'string' ? spec.default : undefined}
          onChange={(e) => onChange(e.target.value === '' ? undefined : e.target.value)}
        />
      )
    case 'expression':
    case 'string':
      return (
        <input
          data-testid={testid}
          className={spec.kind === 'expression' ? 'mono' : undefined}
          value={typeof value === 'string' ? value : ''}
          placeholder={typeof spec.default === 'string' ? spec.default : undefined}
          onChange={(e) => onChange(e.target.value === '' ? undefined : e.target.value)}
        />
      )
    case 'number':
    case 'integer':
      return <NumberInput testid={testid} spec={spec} value={value} onChange={onChange} />
    case 'boolean':
      return (
        <input
          data-testid={testid}
          type="checkbox"
          checked={value === true}
          onChange={(e) => onChange(e.target.checked)}
        />
      )
    case 'enum':
      return (
        <select
          data-testid={testid}
          value={typeof value === 'string' ? value : ''}
          onChange={(e) => onChange(e.target.value === '' ? undefined : e.target.value)}
        >
          <option value="">{spec.default !== undefined ? `default (${String(spec.default)})` : '—'}</option>
          {(spec.enum ?? []).map((v) => (
            <option key={v} value={v}>
              {v}
            </option>
          ))}
        </select>
      )
    case 'stringArray':
      return (
        <DraftInput
          testid={testid}
          value={Array.isArray(value) ? value.join(', ') : ''}
          parse={(s) => {
            const items = s.split(',').map((x) => x.trim()).filter(Boolean)
            return { ok: true, value: items.length ? items : undefined }
          }}
          onChange={onChange}
        />
      )
    default:
      // object, cases, retry: JSON
      return (
        <DraftInput
          testid={testid}
          multiline
          value={value === undefined ? '' : JSON.stringify(value, null, 2)}
          parse={(s) => {
            if (s.trim() === '') return { ok: true, value: undefined }
            try {
              return { ok: true, value: JSON.parse(s) as unknown }
            } catch {
              return { ok: false }
            }
          }}
          onChange={onChange}
        />
      )
  }
}

function NumberInput({ testid, spec, value, onChange }: { testid: string; spec: FieldSpec; value: unknown; onChange: (v: unknown) => void }) {
  return (
    <DraftInput
      testid={testid}
      type="number"
      min={spec.min}
      max={spec.max}
      step={spec.kind === 'integer' ? 1 : 'any'}
      placeholder={spec.default !== undefined ? String(spec.default) : undefined}
      value={typeof value === 'number' ? String(value) : ''}
      parse={(s) => {
        if (s.trim() === '') return { ok: true, value: undefined }
        const n = Number(s)
        if (!Number.isFinite(n) || (spec.kind === 'integer' && !Number.isInteger(n))) return { ok: false }
        return { ok: true, value: n }
      }}
      onChange={onChange}
    />
  )
}

interface DraftInputProps {
  testid: string
  value: string
  parse: (s: string) => { ok: boolean; value?: unknown }
  onChange: (v: unknown) => void
  multiline?: boolean
  type?: string
  min?: number
  max?: number
  step?: number | string
  placeholder?: string
}

/** An input holding a local draft while focused; writes on blur or Enter when the draft parses. */
function DraftInput({ testid, value, parse, onChange, multiline, ...rest }: DraftInputProps) {
  const [draft, setDraft] = useState<string | null>(null)
  const [bad, setBad] = useState(false)
  useEffect(() => setBad(false), [value])
  const commit = () => {
    if (draft === null) return
    const r = parse(draft)
    if (r.ok) {
      if (draft !== value) onChange(r.value)
      setDraft(null)
      setBad(false)
    } else setBad(true)
  }
  const common = {
    'data-testid': testid,
    className: `${multiline ? 'mono' : ''}${bad ? ' bad' : ''}`,
    value: draft ?? value,
    onBlur: commit,
  }
  if (multiline) {
    return <textarea {...common} rows={4} onChange={(e) => setDraft(e.target.value)} />
  }
  return (
    <input
      {...common}
      {...rest}
      onChange={(e) => setDraft(e.target.value)}
      onKeyDown={(e) => {
        if (e.key === 'Enter') commit()
      }}
    />
  )
}
