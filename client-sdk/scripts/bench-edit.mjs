// Per-edit cost of the workflow helpers at 100, 1k and 10k blocks: median µs of one
// updateBlock / moveBlock / connect / removeBlock, each followed by what an editor reads
// afterwards (`blocks()` / `connections()`), and of one drag step through the React Flow
// binding's model (dragStep) and through a copy of the binding's per-step work before it
// (dragStepOld). Run: `node scripts/bench-edit.mjs` (bundles the TypeScript
// sources with esbuild first; no server needed).
import { build } from 'esbuild'
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const dir = mkdtempSync(path.join(os.tmpdir(), 'resonant-bench-'))
const model = path.join(root, 'packages/react/src/flow-model.ts')
const entry = path.join(dir, 'entry.ts')
writeFileSync(
  entry,
  `export * as client from ${JSON.stringify(path.join(root, 'packages/client/src/index.ts'))}\n` +
    `export * as Y from 'yjs'\n` +
    (existsSync(model) ? `export * as flow from ${JSON.stringify(model)}\n` : ''),
)
const out = path.join(dir, 'bundle.mjs')
await build({
  entryPoints: [entry],
  bundle: true,
  format: 'esm',
  platform: 'node',
  outfile: out,
  logLevel: 'warning',
  conditions: ['source'],
  nodePaths: [path.join(root, 'node_modules')],
})
const { client, Y, flow } = await import(pathToFileURL(out).href)

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

function time(n, fn) {
  for (let i = 0; i < Math.min(20, n); i++) fn(i) // warm-up
  const t = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    fn(i + 20)
    t.push((performance.now() - t0) * 1000)
  }
  return median(t)
}

function setup(size) {
  const doc = new Y.Doc()
  const wf = new client.WorkflowDoc(doc, {}, {})
  const ids = []
  wf.transact(() => {
    for (let i = 0; i < size; i++) ids.push(wf.addBlock({ id: `b${i}`, type: 'ai', position: { x: i * 10, y: 0 } }))
  })
  wf.transact(() => {
    for (let i = 1; i < size; i++) if (i % 2) wf.connect({ source: ids[i - 1], target: ids[i] })
  })
  wf.blocks()
  wf.connections()
  return { doc, wf, ids }
}

const rows = []
for (const size of [100, 1000, 10000]) {
  const runs = 300
  const r = { size }
  {
    const { wf, ids } = setup(size)
    r.updateBlock = time(runs, (i) => {
      wf.updateBlock(ids[(i * 7919) % size], { data: { label: `L${i}` } })
      wf.blocks()
    })
    r.moveBlock = time(runs, (i) => {
      wf.moveBlock(ids[(i * 7919) % size], { x: i, y: i })
      wf.blocks()
    })
    r.connect = time(runs, (i) => {
      // Even → even+2: never a duplicate of the setup's chain.
      const a = ((i * 7919) % (size / 2 - 1)) * 2
      wf.connect({ source: ids[a], target: ids[a + 2], sourceHandle: `h${i}` })
      wf.connections()
    })
    r.removeBlock = time(Math.min(runs, size / 4), (i) => {
      wf.removeBlock(ids[size - 1 - i])
      wf.blocks()
      wf.connections()
    })
  }
  if (flow?.FlowModel) {
    const { wf, ids } = setup(size)
    const m = new flow.FlowModel()
    m.setBlocks(wf.blocks())
    const id = ids[Math.floor(size / 2)]
    for (const b of wf.blocks()) m.applyNodeChanges([{ type: 'dimensions', id: b.id, dimensions: { width: 150, height: 40 } }])
    m.nodes()
    m.applyNodeChanges([{ type: 'select', id, selected: true }])
    r.dragStep = time(runs, (i) => {
      m.applyNodeChanges([{ type: 'position', id, position: { x: i, y: i }, dragging: true }])
      m.nodes()
    })
  }
  {
    // The binding before FlowModel (useFlow's per-step work, copied from its last version):
    // the local state map copied, every node's cache key rebuilt, the selection refiltered.
    const { wf, ids } = setup(size)
    const blocks = wf.blocks()
    let local = new Map(blocks.map((b) => [b.id, { measured: { width: 150, height: 40 } }]))
    let cache = new Map()
    const id = ids[Math.floor(size / 2)]
    local.set(id, { ...local.get(id), selected: true })
    const remote = { drags: {}, selections: {} }
    r.dragStepOld = time(runs, (i) => {
      const m = new Map(local)
      m.set(id, { ...m.get(id), dragging: true, position: { x: i, y: i } })
      local = m
      const next = new Map()
      const out = blocks.map((block) => {
        const loc = local.get(block.id)
        const drag = remote.drags[block.id]
        const sel = remote.selections[block.id] ?? []
        const key = [block, loc, drag ? JSON.stringify(drag) : '', sel.length ? JSON.stringify(sel) : '']
        const prev = cache.get(block.id)
        if (prev && prev.key.every((k, j) => k === key[j])) {
          next.set(block.id, prev)
          return prev.node
        }
        const node = { id: block.id, type: block.type, position: loc?.position ?? block.position, data: { block }, selected: !!loc?.selected }
        next.set(block.id, { key, node })
        return node
      })
      cache = next
      blocks.filter((b) => local.get(b.id)?.selected).map((b) => b.id)
      return out
    })
  }
  rows.push(r)
}
const cols = ['updateBlock', 'moveBlock', 'connect', 'removeBlock', 'dragStep', 'dragStepOld']
console.log(`median µs per edit   ${cols.map((c) => c.padStart(12)).join('')}`)
for (const r of rows) console.log(`${String(r.size).padStart(6)} blocks       ${cols.map((c) => (r[c] === undefined ? '-' : r[c].toFixed(1)).padStart(12)).join('')}`)
