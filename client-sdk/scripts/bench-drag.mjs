// A drag in the demo editor at 100, 1k and 10k blocks, in Debian's Chromium: main-thread time
// per drag step (long tasks over 50 ms, and the median step from pointer event to the next
// frame). Not a test (it takes minutes): `node scripts/bench-drag.mjs [--dist <demo dist>]`.
// Serves the demo's build (default demo/dist) with `vite preview`, proxied to a server
// ($RESONANT_BIN or $CARGO_TARGET_DIR/debug/resonant), so two builds of the demo can be
// compared against one server.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const root = fileURLToPath(new URL('..', import.meta.url))
const arg = (name, d) => {
  const i = process.argv.indexOf(name)
  return i > 0 ? process.argv[i + 1] : d
}
const dist = path.resolve(arg('--dist', path.join(root, 'demo/dist')))
const sizes = arg('--sizes', '100,1000,10000').split(',').map(Number)
const bin = [process.env.RESONANT_BIN, process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug/resonant')].find((p) => p && existsSync(p))
if (!bin) throw new Error('set RESONANT_BIN')
const children = []
process.on('exit', () => children.forEach((c) => c.kill('SIGTERM')))

function start(cmd, args, opts, pattern) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], ...opts })
  children.push(child)
  return new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      const m = pattern.exec(l.replace(/\x1b\[[0-9;]*m/g, ''))
      if (m) resolve(m[1])
    })
    child.once('exit', (code) => reject(new Error(`${cmd} exited ${code}`)))
  })
}

const port = await start(bin, ['serve', '--port', '0', '--data-dir', mkdtempSync(path.join(os.tmpdir(), 'resonant-drag-'))], { env: { ...process.env, RESONANT_LOG: 'warn' } }, /^resonant listening on 127\.0\.0\.1:(\d+)$/)
const log = (m) => process.env.VERBOSE && console.error(m)
log(`server on ${port}`)
const previewPort = 20000 + Math.floor(Math.random() * 20000)
const base = await start(
  'npx',
  ['vite', 'preview', '--outDir', dist, '--port', String(previewPort), '--strictPort', '--host', '127.0.0.1'],
  { cwd: path.join(root, 'demo'), env: { ...process.env, RESONANT_URL: `http://127.0.0.1:${port}` } },
  /(http:\/\/127\.0\.0\.1:\d+)\//,
)
log(`preview on ${base}`)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0
console.log(`demo: ${dist}`)
console.log('blocks   median step ms   long tasks (>50 ms)   longest ms')
for (const n of sizes) {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage()
  await page.goto(`${base}/?name=Bench`)
  log('page open')
  await page.waitForURL(/workflow=/)
  log('workflow')
  await page.waitForFunction(() => window.__resonant?.room?.synced && window.__resonant.room.workflow.blocks().length >= 3)
  await page.evaluate((n) => {
    const wf = window.__resonant.room.workflow
    wf.transact(() => {
      for (let i = 3; i < n; i++) wf.addBlock({ id: `t${i}`, type: 'transform', position: { x: 40 + (i % 100) * 220, y: 300 + Math.floor(i / 100) * 120 } })
    })
  }, n)
  await page.waitForFunction((n) => window.__resonant.room.saveStatus === 'saved' && window.__resonant.room.workflow.blocks().length >= n, n, { timeout: 120000 })
  const node = page.getByTestId('node-ai')
  const box = await node.boundingBox()
  await page.evaluate(() => {
    window.__long = []
    new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => e.duration))).observe({ type: 'longtask' })
  })
  let x = box.x + box.width / 2
  let y = box.y + 10
  await page.mouse.move(x, y)
  await page.mouse.down()
  const steps = []
  for (let i = 0; i < 40; i++) {
    x += 4
    y += 2
    const t0 = Date.now()
    await page.mouse.move(x, y)
    // Until the next frame is painted: the step's main-thread work plus one frame at most.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0))))
    steps.push(Date.now() - t0)
  }
  await page.mouse.up()
  const long = await page.evaluate(() => window.__long)
  console.log(`${String(n).padStart(6)}   ${median(steps).toFixed(0).padStart(14)}   ${String(long.length).padStart(19)}   ${Math.max(0, ...long).toFixed(0).padStart(10)}`)
  await page.context().close()
}
await browser.close()
process.exit(0)
