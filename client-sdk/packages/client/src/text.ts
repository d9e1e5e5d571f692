/**
 * Collaborative text fields (docs/workflow-schema.md, "Text fields"): prompts, templates,
 * labels and messages held as `Y.Text` inside a block's `data` / `config` map, so concurrent
 * typing merges character by character instead of the last keystroke replacing the string.
 *
 * A text field may still hold a plain string (documents written before, or by stock
 * clients); both read as the same string. The first edit migrates it: one transaction
 * replaces the string with a `Y.Text` holding it and applies the edit as a diff.
 *
 * Two editors migrating the same field concurrently each put their own `Y.Text` in the map;
 * the map keeps one (the winner) and deletes the other (the loser), with whatever was typed
 * into it. The client that created the loser repairs that ({@link watchTextMigrations}): both
 * texts start with the same base string inserted right after the text itself, so the base's
 * characters have known ids in each; every insertion made into the loser (by anyone) is
 * re-inserted into the winner next to the same base character, and every base character
 * deleted in the loser is deleted in the winner. Only the loser's creator does it, so nothing
 * is applied twice. Three or more concurrent migrations of one field in one round trip are
 * not handled (the rescue may land in a text that itself lost).
 */
import * as Y from 'yjs'
import { specOf } from './schema.js'

/** A block's part that holds fields. */
export type FieldPart = 'data' | 'config'

/** One change to a string: remove `remove` characters at `index`, then insert `insert` there. */
export interface TextSplice {
  index: number
  remove: number
  insert: string
}

/** A Yjs text delta (what `Y.YTextEvent.delta` holds), in string units. */
export type TextDelta = Array<{ retain?: number; delete?: number; insert?: string | object }>

/** A selection in a text input: `start` ≤ `end`, both in UTF-16 units. */
export interface Selection {
  start: number
  end: number
}

/** `data` fields that are text whatever the block type. */
const DATA_TEXT = new Set(['label', 'description'])

/**
 * Whether a field is a text field: `data.label` and `data.description` of every block, and
 * every config field whose schema kind is `template` (prompts, templates, messages, URLs and
 * bodies). Ids, enums, numbers, expressions and JSON stay plain values.
 */
export function isTextField(type: unknown, part: FieldPart, field: string): boolean {
  if (part === 'data') return DATA_TEXT.has(field)
  const spec = specOf(type)
  return !!spec && Object.hasOwn(spec.fields, field) && spec.fields[field].kind === 'template'
}

/**
 * The smallest splice turning `prev` into `next`. `caret` (where the caret is in `next` after
 * the edit) picks among equally small splices, so typing "a" into "aa" at the start is an
 * insertion at 0, not at 2.
 */
export function diffText(prev: string, next: string, caret?: number): TextSplice {
  let start = 0
  const max = Math.min(prev.length, next.length)
  while (start < max && prev.charCodeAt(start) === next.charCodeAt(start)) start++
  let endP = prev.length
  let endN = next.length
  while (endP > start && endN > start && prev.charCodeAt(endP - 1) === next.charCodeAt(endN - 1)) {
    endP--
    endN--
  }
  const len = endN - start
  if (caret !== undefined && caret < endN && caret - len >= 0 && endP === start && len > 0) {
    // A pure insertion in a run of equal characters could be at several places: take the one
    // ending at the caret, when removing it there gives back `prev`.
    if (next.slice(0, caret - len) + next.slice(caret) === prev) {
      start = caret - len
      endN = caret
      endP = start
    }
  }
  // Never split a surrogate pair.
  if (start > 0 && isHighSurrogate(next.charCodeAt(start - 1)) && start < endN) {
    start--
  }
  return { index: start, remove: endP - start, insert: next.slice(start, endN) }
}

function isHighSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff
}

/** The delta of a splice (what {@link transformSelection} takes). */
export function spliceDelta(s: TextSplice): TextDelta {
  const d: TextDelta = []
  if (s.index > 0) d.push({ retain: s.index })
  if (s.remove > 0) d.push({ delete: s.remove })
  if (s.insert) d.push({ insert: s.insert })
  return d
}

/**
 * Where an index moves when `delta` (someone else's change) is applied: text inserted before
 * it, or at it, pushes it right; text deleted before it pulls it left. This is what keeps my
 * caret where I was typing while others type elsewhere in the same field.
 */
export function transformIndex(delta: TextDelta, index: number): number {
  let pos = 0 // position in the old text
  let shift = 0
  for (const op of delta) {
    if (pos > index) break
    if (op.retain !== undefined) pos += op.retain
    else if (op.insert !== undefined) {
      // An insertion exactly at my caret lands before it: a peer typing at my caret does not
      // type into the middle of my word.
      if (pos <= index) shift += typeof op.insert === 'string' ? op.insert.length : 1
    } else if (op.delete !== undefined) {
      const from = pos
      const to = pos + op.delete
      if (to <= index) shift -= op.delete
      else if (from < index) shift -= index - from
      pos = to
    }
  }
  return Math.max(0, index + shift)
}

/** A selection moved by someone else's change (see {@link transformIndex}). */
export function transformSelection(delta: TextDelta, sel: Selection): Selection {
  const start = transformIndex(delta, sel.start)
  const end = sel.end === sel.start ? start : transformIndex(delta, sel.end)
  return { start, end: Math.max(start, end) }
}

/** Applies a splice to a `Y.Text` (inside the caller's transaction). */
export function applySplice(text: Y.Text, s: TextSplice) {
  if (s.remove > 0) text.delete(s.index, s.remove)
  if (s.insert) text.insert(s.index, s.insert)
}

/**
 * Texts this client created by migration, per document, with the length of the base string
 * each started with: the candidates for a rescue. Kept for the session (one per field first
 * edited here, so few).
 */
const migrated = new WeakMap<Y.Doc, Map<Y.Text, number>>()

/**
 * Sets a text field of `fields` (a block's `data` or `config` map) to `next`, inside the
 * caller's transaction: a diff into its `Y.Text`, or, when it holds a plain string (or
 * nothing), a new `Y.Text` holding the old string followed by the diff (the migration).
 */
export function setTextField(fields: Y.Map<unknown>, field: string, next: string, caret?: number) {
  const cur = fields.get(field)
  if (cur instanceof Y.Text) {
    const prev = cur.toString()
    if (prev !== next) applySplice(cur, diffText(prev, next, caret))
    return
  }
  const base = typeof cur === 'string' ? cur : ''
  const text = new Y.Text()
  fields.set(field, text)
  // Inserted after integration, so the base's characters get the ids right after the text's
  // own (what the rescue relies on), whatever Yjs does with prelim content.
  if (base) text.insert(0, base)
  const doc = fields.doc
  if (doc) {
    let m = migrated.get(doc)
    if (!m) migrated.set(doc, (m = new Map()))
    m.set(text, base.length)
  }
  if (base !== next) applySplice(text, diffText(base, next, caret))
}

/** A `Y.Text` as its string, a plain string as itself; anything else is undefined. */
export function readText(v: unknown): string | undefined {
  if (v instanceof Y.Text) return v.toString()
  return typeof v === 'string' ? v : undefined
}

/**
 * Watches `doc` for texts this client migrated that lost a concurrent migration, and moves
 * what was typed into them into the winner (the scheme is described at the top of this file),
 * as a transaction with `origin`. Returns a function that stops watching.
 */
export function watchTextMigrations(doc: Y.Doc, origin: unknown): () => void {
  // On `afterTransaction`, which Yjs emits before it garbage-collects what the transaction
  // deleted: the loser's characters are still readable then.
  const onAfter = (txn: Y.Transaction) => {
    if (txn.local) return
    const mine = migrated.get(doc)
    if (!mine || mine.size === 0) return
    for (const [loser, baseLen] of mine) {
      if (!loser._item?.deleted) continue
      mine.delete(loser)
      const parent = loser.parent as Y.Map<unknown> | null
      const key = loser._item.parentSub
      // A deleted block (or a restore) deletes its map too: nothing to move the text into.
      const winner = parent && key !== null && !parent._item?.deleted ? parent.get(key) : undefined
      if (winner instanceof Y.Text && winner !== loser) {
        const snapshot = readLoser(loser, baseLen, txn.deleteSet)
        doc.transact(() => rescueInto(winner, snapshot), origin)
      }
    }
  }
  doc.on('afterTransaction', onAfter)
  return () => doc.off('afterTransaction', onAfter)
}

/** What was typed into a text that lost: insertions anchored after a base character (-1: at the start), and the base characters deleted. */
export interface LostEdits {
  baseLen: number
  inserts: Array<{ after: number; text: string }>
  deleted: number[]
}

/** The base characters of a migrated text: clocks right after the text's own item. */
function baseStart(text: Y.Text): { client: number; first: number } {
  const id = text._item!.id
  return { client: id.client, first: id.clock + 1 }
}

/**
 * Reads a lost text's edits against its base, given the delete set of the transaction that
 * deleted it (the text as it was is what is live or deleted by that transaction). Must run
 * before Yjs garbage-collects that transaction, while the loser's strings are still there.
 * Text deleted earlier may still hold its string too (undo keeps it), hence the delete set.
 */
export function readLoser(loser: Y.Text, baseLen: number, lossDeletes: Y.Transaction['deleteSet']): LostEdits {
  const b = baseStart(loser)
  const out: LostEdits = { baseLen, inserts: [], deleted: [] }
  let k = -1
  let pending = ''
  const flush = () => {
    if (pending) out.inserts.push({ after: k, text: pending })
    pending = ''
  }
  for (let n = loser._start; n; n = n.right) {
    // An item is deleted whole (the loss deletes every item not already deleted), so its first
    // id tells when.
    const live = n.content instanceof Y.ContentString && (!n.deleted || Y.isDeleted(lossDeletes, n.id))
    if (n.id.client === b.client && n.id.clock >= b.first && n.id.clock < b.first + baseLen) {
      flush()
      const first = n.id.clock - b.first
      const last = Math.min(first + n.length, baseLen)
      for (let i = first; i < last; i++) if (!live) out.deleted.push(i)
      k = last - 1
      // Yjs merges the migration's first edit into the base's item when it extends it.
      if (live && last - first < n.length) pending += (n.content as Y.ContentString).str.slice(last - first)
    } else if (live) {
      pending += (n.content as Y.ContentString).str
    }
  }
  flush()
  return out
}

/**
 * Applies a lost text's edits to the winner (inside the caller's transaction): each insertion
 * next to the same base character, each deleted base character deleted. A winner that did not
 * start from the same base (an old client rewrote the string meanwhile) gets the lost text's
 * insertions appended rather than dropped.
 */
export function rescueInto(winner: Y.Text, lost: LostEdits) {
  const { baseLen } = lost
  const b = baseStart(winner)
  const wPos = new Array<number>(baseLen).fill(-1)
  const wDel = new Array<boolean>(baseLen).fill(false)
  let pos = 0
  for (let n = winner._start; n; n = n.right) {
    if (n.id.client === b.client && n.id.clock >= b.first && n.id.clock < b.first + baseLen) {
      const first = n.id.clock - b.first
      const last = Math.min(first + n.length, baseLen)
      for (let i = first; i < last; i++) {
        wPos[i] = pos + (n.deleted ? 0 : i - first)
        wDel[i] = n.deleted
      }
    }
    if (!n.deleted && n.countable) pos += n.length
  }
  if (wPos.some((p) => p < 0)) {
    const extra = lost.inserts.map((x) => x.text).join('')
    if (extra) winner.insert(winner.length, extra)
    return
  }
  const after = (k: number) => (k < 0 ? 0 : wPos[k] + (wDel[k] ? 0 : 1))
  const splices: Array<{ at: number; remove: number; insert: string; order: number }> = []
  lost.inserts.forEach((x, order) => splices.push({ at: after(x.after), remove: 0, insert: x.text, order }))
  for (const i of lost.deleted) if (!wDel[i]) splices.push({ at: wPos[i], remove: 1, insert: '', order: 0 })
  // Right to left; at one position the deletion first, then later insertions before earlier
  // ones (each lands in front of the one after it), so every index stays valid.
  splices.sort((a, b) => b.at - a.at || b.remove - a.remove || b.order - a.order)
  for (const s of splices) {
    if (s.remove) winner.delete(s.at, s.remove)
    if (s.insert) winner.insert(s.at, s.insert)
  }
}

/** The string `delta` makes of `prev`; undefined when the delta does not fit `prev`. */
export function applyDelta(prev: string, delta: TextDelta): string | undefined {
  let out = ''
  let pos = 0
  for (const op of delta) {
    if (op.retain !== undefined) {
      if (pos + op.retain > prev.length) return undefined
      out += prev.slice(pos, pos + op.retain)
      pos += op.retain
    } else if (op.delete !== undefined) {
      if (pos + op.delete > prev.length) return undefined
      pos += op.delete
    } else if (typeof op.insert === 'string') out += op.insert
    else return undefined
  }
  return out + prev.slice(pos)
}

/** What {@link bindTextInput} needs of an `<input>` or `<textarea>`. */
export interface TextInputLike {
  value: string
  selectionStart: number | null
  selectionEnd: number | null
  setSelectionRange(start: number, end: number): void
  /** Set on DOM elements: the selection is restored only while the element has focus. */
  ownerDocument?: { activeElement: unknown } | null
  addEventListener(type: 'input', cb: () => void): void
  removeEventListener(type: 'input', cb: () => void): void
}

/** What {@link bindTextInput} needs of a workflow document (a `WorkflowDoc`). */
export interface TextHost {
  textOf(blockId: string, part: FieldPart, field: string): Y.Text | undefined
  block(blockId: string): { data: Record<string, unknown>; config: Record<string, unknown> } | undefined
  setText(blockId: string, part: FieldPart, field: string, value: string, caret?: number): void
  updateBlock(blockId: string, patch: { data?: Record<string, unknown>; config?: Record<string, unknown> }): void
  observe(cb: (c: { blockIds: Set<string>; blocks: boolean }) => void): () => void
}

/** Options of {@link bindTextInput}. */
export interface BindTextOptions {
  /**
   * Clearing the input removes the field instead of leaving an empty text: for optional
   * config fields, where absent means the default (an output without a template passes its
   * input through; an empty template outputs "").
   */
  deleteWhenEmpty?: boolean
}

/**
 * Binds an input to a text field: typing becomes a diff into the field's `Y.Text` (migrating
 * a plain string on the first keystroke), and others' edits update the input while my caret
 * and selection stay on the characters they were on (shifted by the remote delta, or by a diff
 * when the field's text was replaced: a migration, a rescue, a restore). Returns the unbind.
 */
export function bindTextInput(
  el: TextInputLike,
  host: TextHost,
  blockId: string,
  part: FieldPart,
  field: string,
  opts: BindTextOptions = {},
): () => void {
  const read = () => readText(host.block(blockId)?.[part]?.[field]) ?? ''
  let bound: Y.Text | undefined
  const show = (next: string, delta?: TextDelta) => {
    if (el.value === next) return
    const d = delta && applyDelta(el.value, delta) === next ? delta : spliceDelta(diffText(el.value, next))
    const start = el.selectionStart ?? el.value.length
    const end = el.selectionEnd ?? start
    const sel = transformSelection(d, { start, end })
    el.value = next
    // Some browsers focus an element whose selection is set: only while it has focus anyway.
    if (!el.ownerDocument || el.ownerDocument.activeElement === el) el.setSelectionRange(sel.start, sel.end)
  }
  const onText = (e: Y.YTextEvent) => show(e.target.toString(), e.delta as TextDelta)
  const rebind = () => {
    const t = host.textOf(blockId, part, field)
    if (t !== bound) {
      bound?.unobserve(onText)
      bound = t
      bound?.observe(onText)
    }
    show(read())
  }
  const onInput = () => {
    if (el.value === '' && opts.deleteWhenEmpty) host.updateBlock(blockId, { [part]: { [field]: undefined } })
    else host.setText(blockId, part, field, el.value, el.selectionEnd ?? undefined)
  }
  el.value = read()
  rebind()
  el.addEventListener('input', onInput)
  // After the text's own observer (Yjs calls type observers before transaction listeners), so
  // a remote edit is shown through its exact delta and this only catches replacements.
  // The block's own changes, or its text deleted (replaced, or the block by a restore); any
  // block change only while there is no text yet (a re-created block with a plain string).
  const off = host.observe((c) => {
    if (c.blockIds.has(blockId) || bound?._item?.deleted || (!bound && c.blocks)) rebind()
  })
  return () => {
    off()
    bound?.unobserve(onText)
    el.removeEventListener('input', onInput)
  }
}
