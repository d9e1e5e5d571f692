import { expect, it } from 'vitest'
import { Execution, type ExecutionHost } from '../src/executions.js'
import type { ExecutionEvent } from '../src/index.js'

function host() {
  const resumes: Array<[string, number]> = []
  const flushes: Array<() => void> = []
  const h: ExecutionHost = {
    request: async () => ({}),
    resume: (id, after) => resumes.push([id, after]),
    handleFor: () => {
      throw new Error('unused')
    },
    schedule: (f) => flushes.push(f),
  }
  return { h, resumes, flushes }
}

const ev = (seq: number, type: string, extra: Record<string, unknown> = {}): ExecutionEvent => ({
  type,
  executionId: 'x',
  workflowId: 'w',
  seq,
  ts: seq,
  ...extra,
})

it('applies events in seq order: duplicates dropped, a gap asked for once and filled', () => {
  const { h, resumes, flushes } = host()
  const e = new Execution('x', h)
  e.receive(ev(1, 'execution.started'))
  e.receive(ev(2, 'block.started', { blockId: 'gen', blockType: 'ai' }))
  e.receive(ev(2, 'block.started', { blockId: 'gen', blockType: 'ai' }))
  e.receive(ev(4, 'block.delta', { blockId: 'gen', text: 'b' }))
  e.receive(ev(5, 'block.delta', { blockId: 'gen', text: 'c' }))
  expect(e.state().seq).toBe(2)
  expect(resumes).toEqual([['x', 2]])
  e.receive(ev(3, 'block.delta', { blockId: 'gen', text: 'a' }))
  expect(e.state().seq).toBe(5)
  expect(e.state().blocks.gen.text).toBe('abc')
  // A replay overlapping what arrived live changes nothing.
  for (const s of [3, 4, 5]) e.receive(ev(s, 'block.delta', { blockId: 'gen', text: 'zzz' }))
  expect(e.state().blocks.gen.text).toBe('abc')
  expect(e.duplicates).toBe(4)
  // Notifications are batched: one scheduled flush for all of the above.
  expect(flushes.length).toBe(1)
})

it('a retry voids streamed text; loop iterations get their own keys; the end resolves done', async () => {
  const { h } = host()
  const e = new Execution('x', h)
  e.receive(ev(1, 'execution.started'))
  e.receive(ev(2, 'block.delta', { blockId: 'gen', text: 'half' }))
  e.receive(ev(3, 'block.retrying', { blockId: 'gen', attempt: 1, reason: 'stream cut' }))
  e.receive(ev(4, 'block.delta', { blockId: 'gen', text: 'whole' }))
  e.receive(ev(5, 'block.completed', { blockId: 'gen', output: 'whole', tokens: 3 }))
  e.receive(ev(6, 'block.waiting', { blockId: 'ok', scope: 'each[1]', reason: 'approval', message: 'fine?' }))
  e.receive(ev(7, 'execution.completed', { outputs: { out: 'whole' }, tokens: 3, costUsd: 0 }))
  const s = await e.done
  expect(s.blocks.gen).toMatchObject({ status: 'completed', text: 'whole', output: 'whole', attempt: 2 })
  expect(s.blocks['each[1]/ok']).toMatchObject({ status: 'waiting', waiting: { reason: 'approval', message: 'fine?' } })
  expect(s).toMatchObject({ status: 'completed', outputs: { out: 'whole' }, tokens: 3 })
})

it('a cancelled or failed execution leaves no block running or waiting', () => {
  for (const [end, expected] of [
    ['execution.cancelled', 'cancelled'],
    ['execution.failed', 'cancelled'],
  ] as const) {
    const { h, flushes } = host()
    const e = new Execution('x', h)
    e.receive(ev(1, 'execution.started'))
    e.receive(ev(2, 'block.started', { blockId: 'in' }))
    e.receive(ev(3, 'block.completed', { blockId: 'in', output: 1 }))
    e.receive(ev(4, 'block.started', { blockId: 'gen' }))
    e.receive(ev(5, 'block.delta', { blockId: 'gen', text: 'half' }))
    e.receive(ev(6, 'block.waiting', { blockId: 'ok', reason: 'approval', message: 'Ship it?' }))
    e.receive(ev(7, 'block.retrying', { blockId: 'call', attempt: 1 }))
    e.receive(ev(8, 'block.started', { blockId: 'each', scope: 'loop[0]' }))
    e.receive(ev(9, end, { error: 'boom' }))
    for (const f of flushes) f()
    const s = e.state()
    expect(s.status).toBe(end === 'execution.failed' ? 'failed' : 'cancelled')
    expect(s.blocks.in!.status).toBe('completed')
    for (const key of ['gen', 'ok', 'call', 'loop[0]/each']) {
      expect(s.blocks[key]!.status, key).toBe(expected)
      expect(s.blocks[key]!.waiting, key).toBeUndefined()
    }
    // What was streamed stays visible.
    expect(s.blocks.gen!.text).toBe('half')
  }
})
