import { useEffect, useRef, useState } from 'react'
import { bindTextInput, blockSchema, checkConfig, specOf, type FieldPart, type FieldSpec, type Peer } from '@resonant/client'
import { useBlock, useOthers, useRoom } from '@resonant/react'
import { CasesEditor, isStringMap, RetryEditor, StringMapEditor } from './StructuredFields'

/** Someone else's focus in a text field of the inspected block. */
interface Typist {
  clientId: number
  name: string
  color: string
  part: FieldPart
  field: string
}

/** Edits the selected block: its label and the config fields of its type (from the block schema). */
export function Inspector({ blockId, count }: { blockId: string | undefined; count: number }) {
  const room = useRoom()
  const block = useBlock(blockId ?? '')
  // Only the peers in this block's fields: the inspector does not re-render on others' cursors.
  const typists = useOthers(
    (others: Peer[]): Typist[] =>
      others
        .filter((p) => !p.stale && p.editing && p.editing.block === blockId)
        .map((p) => ({ clientId: p.clientId, name: p.user.name, color: p.user.color, part: p.editing!.part, field: p.editing!.field })),
    (a, b) => JSON.stringify(a) === JSON.stringify(b),
  )
  const typing = (part: FieldPart, field: string) => typists.filter((t) => t.part === part && t.field === field)
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
        {spec?.label ?? block.type} <span className="muted block-id">· {block.id}</span>
      </h2>
      {spec?.description && <p className="muted small">{spec.description}</p>}
      <label className="field">
        <span>
          Label <Typists typists={typing('data', 'label')} testid="typing-label" />
        </span>
        <TextInput key={`${block.id}:label`} testid="field-label" blockId={block.id} part="data" field="label" />
      </label>
      {[...Object.entries(spec?.fields ?? {}), ...Object.entries(commonFields())].map(([name, f]) => (
        <Field
          key={`${block.id}:${name}`}
          blockId={block.id}
          typists={typing('config', name)}
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
  blockId: string
  typists: Typist[]
  name: string
  spec: FieldSpec
  value: unknown
  problem?: string
  onChange: (v: unknown) => void
}

function Field({ blockId, typists, name, spec, value, problem, onChange }: FieldProps) {
  const label = spec.label ?? name
  // Structured editors hold several inputs and buttons: a <label> would send clicks to the first.
  const Wrapper = spec.kind === 'retry' || spec.kind === 'cases' || spec.kind === 'object' ? 'div' : 'label'
  return (
    <Wrapper className={`field${problem ? ' invalid' : ''}`}>
      <span>
        {label}
        {spec.required && <em className="req"> *</em>}
        <Typists typists={typists} testid={`typing-${name}`} />
      </span>
      <FieldInput blockId={blockId} name={name} spec={spec} value={value} onChange={onChange} />
      {spec.help && <small className="muted">{spec.help}</small>}
      {problem && <small className="problem">{problem}</small>}
    </Wrapper>
  )
}

/** Who else is typing in a field: a coloured name per peer. */
function Typists({ typists, testid }: { typists: Typist[]; testid: string }) {
  if (typists.length === 0) return null
  return (
    <span className="typists" data-testid={testid}>
      {typists.map((t) => (
        <span key={t.clientId} className="typist" style={{ color: t.color }}>
          {t.name} is typing
        </span>
      ))}
    </span>
  )
}

/**
 * An input bound to a collaborative text field (`bindTextInput`): uncontrolled, so React never
 * resets the value under the caret; others' edits arrive as deltas that keep my caret on my
 * characters. Focus is shared as presence (`editing`), so others see who types where.
 */
function TextInput(props: { blockId: string; part: FieldPart; field: string; testid: string; multiline?: boolean; placeholder?: string }) {
  const { blockId, part, field, testid, multiline, placeholder } = props
  const room = useRoom()
  const ref = useRef<HTMLInputElement & HTMLTextAreaElement>(null)
  useEffect(() => {
    // A cleared config field is removed, as before text fields: absent means its default.
    const unbind = bindTextInput(ref.current!, room.workflow, blockId, part, field, { deleteWhenEmpty: part === 'config' })
    return () => {
      unbind()
      const e = room.presence.me().editing
      // Unmounted while focused (another block selected): no blur event comes.
      if (e && e.block === blockId && e.part === part && e.field === field) room.presence.update({ editing: null })
    }
  }, [room, blockId, part, field])
  const common = {
    ref,
    'data-testid': testid,
    placeholder,
    onFocus: () => room.presence.update({ editing: { block: blockId, part, field } }),
    onBlur: () => room.presence.update({ editing: null }),
  }
  return multiline ? <textarea {...common} rows={3} className="mono" /> : <input {...common} />
}

function FieldInput({ blockId, name, spec, value, onChange }: Omit<FieldProps, 'problem' | 'typists'>) {
  const testid = `field-${name}`
  switch (spec.kind) {
    case 'template':
      return (
        <TextInput
          testid={testid}
          blockId={blockId}
          part="config"
          field={name}
          multiline
          placeholder={typeof spec.default === 'string' ? spec.default : undefined}
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
    case 'retry':
      if (value === undefined || (typeof value === 'object' && value !== null && !Array.isArray(value))) {
        return <RetryEditor testid={testid} spec={spec} value={value} onChange={onChange} />
      }
      break
    case 'cases':
      if (value === undefined || Array.isArray(value)) return <CasesEditor testid={testid} value={value} onChange={onChange} />
      break
    case 'object':
      if (isStringMap(value)) return <StringMapEditor testid={testid} value={value} onChange={onChange} />
      break
  }
  // Anything else (or a value the forms cannot show): JSON.
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
