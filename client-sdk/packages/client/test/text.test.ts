// Collaborative text fields (text.ts): the binding's pure logic and the migration race between
// two documents exchanging updates by hand, then two editors typing at once through a server.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import type { ResonantClient, Room } from '../src/index.js'
import { client, newWorkflow, startServer, untilDoc, type Server } from './helpers.js'
import { UndoController } from '../src/undo.js'
import { WorkflowDoc } from '../src/workflow.js'
import { applyDelta, bindTextInput, diffText, isTextField, type TextInputLike, spliceDelta, transformIndex, transformSelection, type TextDelta } from '../src/text.js'

/** A workflow document with one AI block whose prompt is a plain string (as old documents hold it). */
function oldDoc(prompt: string, clientID = 1): { doc: Y.Doc; wf: WorkflowDoc } {
  const doc = new Y.Doc()
  doc.clientID = clientID
  const wf = editor(doc)
  const m = new Y.Map<unknown>()
  const config = new Y.Map<unknown>()
  config.set('userPromptTemplate', prompt)
  m.set('id', 'gen')
  m.set('type', 'ai')
  m.set('config', config)
  m.set('data', new Y.Map())
  wf.blocksArray.push([m])
  return { doc, wf }
}

/** A second editor holding a copy of `doc`. */
function copyOf(doc: Y.Doc, clientID: number): { doc: Y.Doc; wf: WorkflowDoc } {
  const copy = new Y.Doc()
  copy.clientID = clientID
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  return { doc: copy, wf: editor(copy) }
}

/** A workflow editor as a room sets it up: with undo, which keeps deleted text from being collected. */
function editor(doc: Y.Doc): WorkflowDoc {
  const origin = {}
  const wf = new WorkflowDoc(doc, origin, {})
  new UndoController(wf, origin)
  return wf
}

/** Delivers everything each document has that the other lacks, until both agree. */
function exchange(a: Y.Doc, b: Y.Doc) {
  for (let i = 0; i < 4; i++) {
    Y.applyUpdate(b, Y.encodeStateAsUpdate(a, Y.encodeStateVector(b)), 'remote')
    Y.applyUpdate(a, Y.encodeStateAsUpdate(b, Y.encodeStateVector(a)), 'remote')
  }
}

function prompt(wf: WorkflowDoc): unknown {
  return wf.block('gen')!.config.userPromptTemplate
}

describe('text fields', () => {
  it('are the template fields, labels and descriptions, not ids, enums or numbers', () => {
    expect(isTextField('ai', 'config', 'userPromptTemplate')).toBe(true)
    expect(isTextField('ai', 'config', 'systemPrompt')).toBe(true)
    expect(isTextField('human', 'config', 'message')).toBe(true)
    expect(isTextField('transform', 'data', 'label')).toBe(true)
    expect(isTextField('ai', 'config', 'model')).toBe(false)
    expect(isTextField('ai', 'config', 'outputFormat')).toBe(false)
    expect(isTextField('ai', 'config', 'temperature')).toBe(false)
    expect(isTextField('condition', 'config', 'expression')).toBe(false)
    expect(isTextField('nope', 'config', 'template')).toBe(false)
  })

  it('new blocks hold them as Y.Text; updateBlock edits them as a diff, not a replace', () => {
    const doc = new Y.Doc()
    const wf = new WorkflowDoc(doc, {}, {})
    const id = wf.addBlock({ type: 'ai', position: { x: 0, y: 0 }, config: { userPromptTemplate: 'Hello' } })
    const text = wf.textOf(id, 'config', 'userPromptTemplate')!
    expect(text).toBeInstanceOf(Y.Text)
    expect(wf.textOf(id, 'data', 'label')!.toString()).toBe('AI')
    const deltas: TextDelta[] = []
    text.observe((e) => deltas.push(e.delta as TextDelta))
    wf.updateBlock(id, { config: { userPromptTemplate: 'Hello world' } })
    expect(wf.textOf(id, 'config', 'userPromptTemplate')).toBe(text)
    expect(deltas).toEqual([[{ retain: 5 }, { insert: ' world' }]])
    expect(wf.block(id)!.config.userPromptTemplate).toBe('Hello world')
  })

  it('an old plain string reads as itself and becomes a Y.Text on its first edit, in one transaction', () => {
    const { doc, wf } = oldDoc('Summarise')
    expect(prompt(wf)).toBe('Summarise')
    expect(wf.textOf('gen', 'config', 'userPromptTemplate')).toBeUndefined()
    let updates = 0
    doc.on('update', () => updates++)
    wf.setText('gen', 'config', 'userPromptTemplate', 'Summarise it')
    expect(updates).toBe(1)
    expect(wf.textOf('gen', 'config', 'userPromptTemplate')!.toString()).toBe('Summarise it')
    expect(prompt(wf)).toBe('Summarise it')
  })

  // Yjs keeps the map entry of the higher client id: both sides of the race are run.
  for (const [ida, idb] of [
    [1, 2],
    [2, 1],
  ]) {
    it(`two editors migrating the same old string at once both keep what they typed (${ida} vs ${idb})`, () => {
      const a = oldDoc('Write a poem', ida)
      const b = copyOf(a.doc, idb)
      // Both type before either hears of the other: each makes its own Y.Text.
      a.wf.setText('gen', 'config', 'userPromptTemplate', 'Write a short poem', 13)
      b.wf.setText('gen', 'config', 'userPromptTemplate', 'Write a poem about rivers', 25)
      exchange(a.doc, b.doc)
      expect(prompt(a.wf)).toBe('Write a short poem about rivers')
      expect(prompt(b.wf)).toBe(prompt(a.wf))
      // Deletions made in the losing text survive too, and typing goes on in the winner.
      const c = oldDoc('one two three', ida)
      const d = copyOf(c.doc, idb)
      c.wf.setText('gen', 'config', 'userPromptTemplate', 'one three', 4)
      d.wf.setText('gen', 'config', 'userPromptTemplate', 'one two three!', 14)
      d.wf.setText('gen', 'config', 'userPromptTemplate', 'One two three!', 1)
      d.wf.setText('gen', 'config', 'userPromptTemplate', 'One two three!xy', 16)
      d.wf.setText('gen', 'config', 'userPromptTemplate', 'One two three!', 14)
      exchange(c.doc, d.doc)
      expect(prompt(c.wf)).toBe('One three!')
      expect(prompt(d.wf)).toBe('One three!')
      d.wf.setText('gen', 'config', 'userPromptTemplate', 'One three!?', 11)
      c.wf.setText('gen', 'config', 'userPromptTemplate', 'Zero one three!', 5)
      exchange(c.doc, d.doc)
      expect(prompt(c.wf)).toBe('Zero one three!?')
      expect(prompt(d.wf)).toBe('Zero one three!?')
    })
  }

  it('a diff uses the caret to place an insertion inside a run of equal characters', () => {
    expect(diffText('aa', 'aaa', 1)).toEqual({ index: 0, remove: 0, insert: 'a' })
    expect(diffText('aa', 'aaa')).toEqual({ index: 2, remove: 0, insert: 'a' })
    expect(diffText('abab', 'ababab', 2)).toEqual({ index: 0, remove: 0, insert: 'ab' })
    // A caret that does not fit a pure insertion there is ignored.
    expect(diffText('abc', 'abxc', 1)).toEqual({ index: 2, remove: 0, insert: 'x' })
    expect(diffText('hello', 'help', 4)).toEqual({ index: 3, remove: 2, insert: 'p' })
    expect(diffText('abc', 'abc')).toEqual({ index: 3, remove: 0, insert: '' })
    // Never half a surrogate pair.
    expect(diffText('😀', '😃')).toEqual({ index: 0, remove: 2, insert: '😃' })
  })

  it('keeps my caret where I type when someone edits before, at or after it', () => {
    // "Hello world", my caret after "world" (11).
    expect(transformIndex([{ insert: 'Oh, ' }], 11)).toBe(15)
    expect(transformIndex([{ retain: 11 }, { insert: '!' }], 11)).toBe(12)
    expect(transformIndex([{ retain: 11 }, { insert: '!' }], 5)).toBe(5)
    expect(transformIndex([{ delete: 6 }], 11)).toBe(5)
    // A deletion spanning the caret leaves it at the deletion's start.
    expect(transformIndex([{ retain: 3 }, { delete: 5 }], 5)).toBe(3)
    expect(transformSelection([{ retain: 2 }, { insert: 'xx' }], { start: 1, end: 4 })).toEqual({ start: 1, end: 6 })
    // A remote change applied to a real text moves the caret the same way the string moved.
    const text = 'Hello world'
    const remote = diffText(text, 'Oh, Hello world')
    const caret = transformIndex(spliceDelta(remote), 6)
    expect('Oh, Hello world'.slice(caret)).toBe(text.slice(6))
  })
})

/** An <input> as far as the binding sees it: a value, a selection and input events. */
class FakeInput implements TextInputLike {
  value = ''
  selectionStart: number | null = 0
  selectionEnd: number | null = 0
  private listeners = new Set<() => void>()
  setSelectionRange(start: number, end: number) {
    this.selectionStart = start
    this.selectionEnd = end
  }
  addEventListener(_: 'input', cb: () => void) {
    this.listeners.add(cb)
  }
  removeEventListener(_: 'input', cb: () => void) {
    this.listeners.delete(cb)
  }
  /** The user selects everything and deletes it. */
  clear() {
    this.value = ''
    this.setSelectionRange(0, 0)
    for (const l of this.listeners) l()
  }
  /** The user types `s` at the caret. */
  type(s: string) {
    const at = this.selectionEnd ?? this.value.length
    this.value = this.value.slice(0, at) + s + this.value.slice(at)
    this.setSelectionRange(at + s.length, at + s.length)
    for (const l of this.listeners) l()
  }
}

describe('an input bound to a text field', () => {
  it('keeps my caret on my word while someone types before it, and sends my typing as a diff', () => {
    const a = oldDoc('Hello world', 1)
    const b = copyOf(a.doc, 2)
    const input = new FakeInput()
    const unbind = bindTextInput(input, a.wf, 'gen', 'config', 'userPromptTemplate')
    expect(input.value).toBe('Hello world')
    input.setSelectionRange(5, 5) // after "Hello"
    input.type(',') // migrates the old string
    exchange(a.doc, b.doc)
    expect(prompt(b.wf)).toBe('Hello, world')
    // Bob types at the start, and at the end.
    b.wf.setText('gen', 'config', 'userPromptTemplate', 'Oh, Hello, world', 4)
    exchange(a.doc, b.doc)
    expect(input.value).toBe('Oh, Hello, world')
    expect(input.selectionEnd, 'the caret stays after "Hello,"').toBe(10)
    b.wf.setText('gen', 'config', 'userPromptTemplate', 'Oh, Hello, world!', 17)
    exchange(a.doc, b.doc)
    expect(input.selectionEnd).toBe(10)
    input.type(' dear')
    exchange(a.doc, b.doc)
    expect(prompt(b.wf)).toBe('Oh, Hello, dear world!')
    // A selection spanning a remote insertion grows with it.
    input.setSelectionRange(4, 9) // "Hello"
    b.wf.setText('gen', 'config', 'userPromptTemplate', 'Oh, Helllo, dear world!', 7)
    exchange(a.doc, b.doc)
    expect(input.value.slice(input.selectionStart!, input.selectionEnd!)).toBe('Helllo')
    // The field's text replaced by another (a version restore rewrites whole blocks): the input
    // follows the new text, and keeps following its edits.
    b.doc.transact(() => {
      const config = new Y.Map<unknown>()
      config.set('userPromptTemplate', new Y.Text('Oh, Hello world'))
      b.wf.blocksArray.get(0).set('config', config)
    })
    exchange(a.doc, b.doc)
    expect(input.value).toBe('Oh, Hello world')
    b.wf.setText('gen', 'config', 'userPromptTemplate', 'Oh, Hello world!', 16)
    exchange(a.doc, b.doc)
    expect(input.value).toBe('Oh, Hello world!')
    input.setSelectionRange(9, 9)
    input.type('!')
    exchange(a.doc, b.doc)
    expect(prompt(b.wf)).toBe('Oh, Hello! world!')
    unbind()
    b.wf.setText('gen', 'config', 'userPromptTemplate', 'gone', 4)
    exchange(a.doc, b.doc)
    expect(input.value, 'unbound: no longer follows').toBe('Oh, Hello! world!')
  })

  it('removes a cleared optional field when asked, and starts a new text on the next keystroke', () => {
    const a = oldDoc('{{ upstream }}', 1)
    const input = new FakeInput()
    const unbind = bindTextInput(input, a.wf, 'gen', 'config', 'userPromptTemplate', { deleteWhenEmpty: true })
    input.clear()
    expect('userPromptTemplate' in a.wf.block('gen')!.config).toBe(false)
    input.type('Hi')
    expect(a.wf.textOf('gen', 'config', 'userPromptTemplate')!.toString()).toBe('Hi')
    unbind()
  })

  it('applies a delta to a string, refusing one that does not fit', () => {
    expect(applyDelta('Hello', [{ retain: 5 }, { insert: '!' }])).toBe('Hello!')
    expect(applyDelta('Hello', [{ delete: 1 }, { insert: 'J' }])).toBe('Jello')
    expect(applyDelta('Hi', [{ retain: 5 }])).toBeUndefined()
  })
})

describe('two editors typing into one field through the server', () => {
  let server: Server
  const clients: ResonantClient[] = []
  beforeAll(async () => {
    server = await startServer()
  })
  afterAll(async () => {
    for (const c of clients) c.destroy()
    await server?.stop()
  })
  function open(name: string, wf: string): Room {
    const c = client(server.url, name)
    clients.push(c)
    return c.enterRoom(wf).room
  }

  it('keeps every character both typed, from the migration of an old string on', async () => {
    const wf = await newWorkflow(server)
    const a = open('ada', wf)
    const b = open('bob', wf)
    await Promise.all([a.whenSynced(), b.whenSynced()])
    // An old document: the prompt is a plain string.
    a.doc.transact(() => {
      const m = new Y.Map<unknown>()
      const config = new Y.Map<unknown>()
      config.set('userPromptTemplate', 'Write a poem')
      m.set('id', 'gen')
      m.set('type', 'ai')
      m.set('config', config)
      a.workflow.blocksArray.push([m])
    })
    const read = (r: Room) => r.workflow.block('gen')?.config.userPromptTemplate
    await untilDoc(b, () => read(b) === 'Write a poem', 'b to see the old prompt')

    // Keystrokes in the same tick on both sides: neither has the other's before typing its own.
    const typed = { a: '', b: '' }
    const key = (r: Room, who: 'a' | 'b', ch: string) => {
      const cur = read(r) as string
      // Ada types after "Write ", Bob at the end; each at their own caret.
      const at = who === 'a' ? 'Write '.length + typed.a.length : cur.length
      typed[who] += ch
      r.workflow.setText('gen', 'config', 'userPromptTemplate', cur.slice(0, at) + ch + cur.slice(at), at + 1)
    }
    for (const [ca, cb] of ['AX', 'By', 'Cz', 'D!', 'E?']) {
      key(a, 'a', ca)
      key(b, 'b', cb)
      // Yield to I/O between pairs, so later keystrokes may or may not have seen earlier remote
      // ones: the result must not depend on which.
      await new Promise((r) => setImmediate(r))
    }
    const expected = 'Write ABCDEa poem' + 'Xyz!?'
    await untilDoc(a, () => read(a) === expected, `a to read ${expected}`).catch(() => {
      throw new Error(`a reads ${String(read(a))}`)
    })
    await untilDoc(b, () => read(b) === expected, `b to read ${expected}`).catch(() => {
      throw new Error(`b reads ${String(read(b))}`)
    })
    expect(a.workflow.textOf('gen', 'config', 'userPromptTemplate')).toBeInstanceOf(Y.Text)
    expect(b.workflow.textOf('gen', 'config', 'userPromptTemplate')).toBeInstanceOf(Y.Text)
  })
})
