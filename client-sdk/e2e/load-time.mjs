// Measures, in Chromium, the time from navigation start to a synced editor (document loaded
// from the server) and to the first rendered block, for a workflow of about 1 MB.
// Usage: npm run build && node e2e/load-time.mjs [--bytes 1000000] [--runs 5]
// Uses $RESONANT_BIN (default: $CARGO_TARGET_DIR/release/resonant, then debug).
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { parseArgs } from 'node:util'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { chromium } from 'playwright-core'
import { ResonantClient } from '../packages/client/dist/index.js'

const { values } = parseArgs({ options: { bytes: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '5' } } })
const target = Number(values.bytes)
const runs = Number(values.runs)
const td = process.env.CARGO_TARGET_DIR ?? path.resolve('../target')
const bin = [process.env.RESONANT_BIN, path.join(td, 'release/resonant'), path.join(td, 'debug/resonant')].find((p) => p && existsSync(p))
if (!bin) throw new Error('no resonant binary: cargo build --release')

const dir = mkdtempSync(path.join(os.tmpdir(), 'resonant-load-'))
const server = spawn(bin, ['serve', '--port', '0', '--data-dir', dir], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RESONANT_LOG: 'warn' } })
const port = await new Promise((resolve) =>
  readline.createInterface({ input: server.stdout }).on('line', (l) => {
    const m = /^resonant listening on 127\.0\.0\.1:(\d+)$/.exec(l)
    if (m) resolve(Number(m[1]))
  }),
)
const base = `http://127.0.0.1:${port}`
const ws = (await (await fetch(`${base}/api/v1/workspaces`)).json()).items[0]
const wf = await (await fetch(`${base}/api/v1/workspaces/${ws.id}/workflows`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'load test' }) })).json()

// Fill the workflow through the SDK: blocks with realistic prompts, chained.
const client = new ResonantClient({ url: base, user: { id: 'seed', name: 'Seed', color: '#888' }, WebSocket })
const { room, leave } = client.enterRoom(wf.id)
await room.whenSynced()
const prompt = 'Summarise the following customer message and propose a reply in a friendly tone. '.repeat(6)
let n = 0
while (Y.encodeStateAsUpdate(room.doc).length < target) {
  room.workflow.transact(() => {
    for (let i = 0; i < 100; i++, n++) {
      room.workflow.addBlock({ id: `b${n}`, type: 'ai', position: { x: (n % 40) * 260, y: Math.floor(n / 40) * 160 }, data: { label: `Step ${n}` }, config: { userPromptTemplate: `${prompt} #${n}`, temperature: 0.7 } })
      if (n > 0) room.workflow.connect({ source: `b${n - 1}`, target: `b${n}` })
    }
  })
}
await room.whenSaved()
const bytes = Y.encodeStateAsUpdate(room.doc).length
leave()

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const synced = []
const rendered = []
for (let i = 0; i < runs; i++) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctx.newPage()
  await page.goto(`${base}/?workflow=${wf.id}&name=Bench${i}`)
  synced.push(
    await page.evaluate(
      () =>
        new Promise((resolve) => {
          const check = () => (window.__resonant?.room ? window.__resonant.room.whenSynced().then(() => resolve(performance.now())) : setTimeout(check, 1))
          check()
        }),
    ),
  )
  await page.waitForSelector('[data-testid^="node-"]')
  rendered.push(await page.evaluate(() => performance.now()))
  await ctx.close()
}
await browser.close()
server.kill('SIGTERM')
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
console.log(`workflow: ${n} blocks, ${n - 1} connections, ${(bytes / 1e6).toFixed(2)} MB as a Yjs update; server ${path.basename(path.dirname(bin))} build`)
console.log(`navigation start → synced:          median ${med(synced).toFixed(0)} ms  (runs: ${synced.map((x) => x.toFixed(0)).join(', ')})`)
console.log(`navigation start → first block shown: median ${med(rendered).toFixed(0)} ms  (runs: ${rendered.map((x) => x.toFixed(0)).join(', ')})`)
process.exit(0)
