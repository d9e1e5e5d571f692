import schemaJson from './block-schema.js'
import type { BlockType } from './types.js'

/** How a config field is edited and checked. */
export type FieldKind =
  | 'template'
  | 'expression'
  | 'string'
  | 'number'
  | 'integer'
  | 'boolean'
  | 'enum'
  | 'stringArray'
  | 'object'
  | 'cases'
  | 'retry'

/** One config field of a block type. */
export interface FieldSpec {
  kind: FieldKind
  required?: boolean
  enum?: string[]
  min?: number
  max?: number
  default?: unknown
  label?: string
  help?: string
}

/** One block type: its handles, config fields and an example config the server accepts. */
export interface BlockTypeSpec {
  label: string
  description: string
  handles: { inputs: string[]; outputs: string[] }
  fields: Record<string, FieldSpec>
  example: Record<string, unknown>
}

/** The block schema shared with the server (tests/block_schema.rs checks the server agrees). */
export interface BlockSchema {
  version: number
  types: Record<BlockType, BlockTypeSpec>
}

/** The block schema: block types, their config fields, bounds and handles. */
export const blockSchema = schemaJson as unknown as BlockSchema

/** The spec of a block type; undefined for anything else (even `constructor` or `toString`). */
export function specOf(type: unknown): BlockTypeSpec | undefined {
  return typeof type === 'string' && Object.hasOwn(blockSchema.types, type)
    ? blockSchema.types[type as BlockType]
    : undefined
}

/** Every block type, in the schema's order. */
export const blockTypes = Object.keys(blockSchema.types) as BlockType[]

/** A problem in one block's config, found before the server would refuse it. */
export interface ConfigProblem {
  field: string
  message: string
}

/**
 * Checks a config against the schema (required fields, kinds, enums, bounds), so an editor can
 * flag a field as it is typed. Templates and expressions are compiled only by the server.
 */
export function checkConfig(type: BlockType, config: Record<string, unknown>): ConfigProblem[] {
  const spec = specOf(type)
  if (!spec) return [{ field: 'type', message: `unknown block type ${String(type)}` }]
  const problems: ConfigProblem[] = []
  for (const [name, f] of Object.entries(spec.fields)) {
    const v = config[name]
    if (v === undefined || v === null) {
      if (f.required) problems.push({ field: name, message: 'required' })
      continue
    }
    switch (f.kind) {
      case 'template':
      case 'expression':
      case 'string':
        if (typeof v !== 'string') problems.push({ field: name, message: 'must be a string' })
        break
      case 'number':
      case 'integer':
        if (typeof v !== 'number' || !Number.isFinite(v)) problems.push({ field: name, message: 'must be a number' })
        else if (f.kind === 'integer' && !Number.isInteger(v)) problems.push({ field: name, message: 'must be an integer' })
        else if (f.min !== undefined && v < f.min) problems.push({ field: name, message: `must be at least ${f.min}` })
        else if (f.max !== undefined && v > f.max) problems.push({ field: name, message: `must be at most ${f.max}` })
        break
      case 'boolean':
        if (typeof v !== 'boolean') problems.push({ field: name, message: 'must be true or false' })
        break
      case 'enum':
        if (!f.enum?.includes(v as string)) problems.push({ field: name, message: `must be one of ${f.enum?.join(', ')}` })
        break
      case 'stringArray':
        if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) problems.push({ field: name, message: 'must be a list of strings' })
        break
      default:
        break
    }
  }
  return problems
}
