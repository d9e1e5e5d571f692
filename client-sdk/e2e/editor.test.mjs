// Browser tests: the demo editor served by the real server, in Debian's Chromium driven by
// playwright-core, two browser contexts as two users. Screenshots go to e2e/artifacts/.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServerAndBrowser } from './harness.mjs'
import { build } from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))
const artifacts = path.join(here, 'artifacts')
mkdirSync(artifacts, { recursive: true })

let env, base, browser

before(async () => {
  // Slow demo tokens so a run lasts long enough to reload in the middle of it.
  env = await startServerAndBrowser({ serverArgs: ['--demo-delay-ms', '60'] })
  base = env.base
  browser = env.browser
})

after(async () => {
  await env?.stop()
})

/**
 * Routes a page's sync sockets through the test: it can hold back the server's save
 * acknowledgements and cut the network (a browser's offline mode does not touch WebSockets).
 */
async function controlSockets(page) {
  const ctl = { holdAcks: false, offline: false, held: [], sockets: new Set(), opened: 0 }
  await page.routeWebSocket(/\/sync\//, (ws) => {
    if (ctl.offline) {
      ws.close({ code: 4000, reason: 'test: offline' })
      return
    }
    ctl.opened++
    const upstream = ws.connectToServer()
    const pair = { ws, upstream }
    ctl.sockets.add(pair)
    ws.onMessage((m) => upstream.send(m))
    upstream.onMessage((m) => {
      if (ctl.holdAcks && typeof m !== 'string' && m[0] === 8) ctl.held.push([ws, m])
      else ws.send(m)
    })
    ws.onClose(() => ctl.sockets.delete(pair))
    upstream.onClose(() => ctl.sockets.delete(pair))
  })
  ctl.release = () => {
    ctl.holdAcks = false
    for (const [ws, m] of ctl.held) ws.send(m)
    ctl.held = []
  }
  ctl.cut = async () => {
    ctl.offline = true
    for (const p of [...ctl.sockets]) {
      await p.ws.close({ code: 4000, reason: 'test: network cut' }).catch(() => {})
      await p.upstream.close().catch(() => {})
    }
    ctl.sockets.clear()
  }
  ctl.restore = async () => {
    ctl.offline = false
    // What a browser does when the network comes back: the client probes and reconnects at once.
    await page.evaluate(() => window.dispatchEvent(new Event('online')))
  }
  return ctl
}

/** Opens a page; `setup(page)` (e.g. routing its sockets) runs before it navigates. */
async function openEditor(context, url, name, setup) {
  const page = await context.newPage()
  const sockets = []
  page.on('websocket', (ws) => {
    if (ws.url().includes('/sync/')) sockets.push(ws)
  })
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e))
  // Before navigating: a route added while the page loads can miss its socket.
  const ctl = setup ? await setup(page) : undefined
  return { page, sockets, ctl, ready: page.goto(url) }
}

const text = (page, id) => page.getByTestId(id).textContent()
const evalRoom = (page, fn, arg) => page.evaluate(([src, a]) => new Function('r', 'a', `return (${src})(r, a)`)(window.__resonant.room, a), [fn.toString(), arg])

async function nodeCount(page) {
  return page.locator('[data-testid^="node-"]').count()
}

test('two users edit, see each other, survive a cut, run and reload mid-run', async () => {
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const A = await openEditor(ctxA, `${base}/?new&name=Ada`, 'Ada', controlSockets)
  const ctlA = A.ctl
  await A.ready
  // The first page creates and seeds a workflow and puts its id in the URL.
  await A.page.waitForURL(/workflow=/)
  await A.page.waitForFunction(() => window.__resonant?.room?.synced && window.__resonant.room.workflow.blocks().length >= 3)
  const url = new URL(A.page.url())
  const workflowId = url.searchParams.get('workflow')
  assert.ok(workflowId)

  const B = await openEditor(ctxB, `${base}/?workflow=${workflowId}&name=Bob`, 'Bob')
  await B.ready
  await B.page.waitForFunction(() => window.__resonant?.room?.synced)
  await B.page.getByTestId('connection-status').filter({ hasText: /connected/i }).waitFor()

  // StrictMode mounts twice; still one socket per page.
  assert.equal(A.sockets.length, 1, 'one WebSocket on page A')
  assert.equal(B.sockets.length, 1, 'one WebSocket on page B')
  await B.page.waitForFunction(() => document.querySelectorAll('[data-testid^="node-"]').length >= 3)
  const seeded = await nodeCount(B.page)

  // A block added by one appears for the other; save status goes Saving… → Saved.
  ctlA.holdAcks = true
  await A.page.getByTestId('add-block-transform').click()
  await A.page.getByTestId('save-status').filter({ hasText: 'Saving' }).waitFor()
  await B.page.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n + 1, seeded)
  ctlA.release()
  await A.page.getByTestId('save-status').filter({ hasText: 'Saved' }).waitFor()

  // A cursor appears for the other user.
  const pane = A.page.locator('.react-flow__pane')
  const box = await pane.boundingBox()
  await A.page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.8)
  await A.page.mouse.move(box.x + box.width * 0.72, box.y + box.height * 0.82)
  await B.page.getByTestId('remote-cursor-Ada').waitFor()
  await B.page.getByTestId('avatar-Ada').waitFor()

  // Remote cursors move without re-rendering the flow's blocks.
  const rendersBefore = await B.page.evaluate(() => window.__resonant.stats.nodes)
  for (let i = 0; i < 20; i++) await A.page.mouse.move(box.x + box.width * (0.3 + i * 0.02), box.y + box.height * 0.7)
  const last = await A.page.evaluate(() => window.__resonant.room.presence.me().cursor)
  await B.page.waitForFunction(
    ([x, y]) => window.__resonant.room.presence.others().some((p) => p.user.name === 'Ada' && p.cursor?.x === x && p.cursor?.y === y),
    [last.x, last.y],
  )
  assert.equal(await B.page.evaluate(() => window.__resonant.stats.nodes), rendersBefore, 'no block re-rendered for cursor moves')

  // A drag is seen live by B through presence and lands in the document once, on drop.
  const dragId = await evalRoom(A.page, (r) => r.workflow.blocks()[0].id)
  const startPos = await evalRoom(B.page, (r, id) => r.workflow.block(id).position, dragId)
  await evalRoom(A.page, (r) => {
    window.__moves = 0
    r.doc.on('update', (_u, origin) => {
      if (origin === r.localOrigin) window.__moves++
    })
  })
  const node = A.page.getByTestId(`node-${dragId}`)
  const nb = await node.boundingBox()
  await A.page.mouse.move(nb.x + nb.width / 2, nb.y + 12)
  await A.page.mouse.down()
  for (let i = 1; i <= 10; i++) await A.page.mouse.move(nb.x + nb.width / 2 + i * 15, nb.y + 12 + i * 8)
  // Mid-drag: B sees A's drag ghost, the document has not changed.
  await B.page.waitForFunction(() => window.__resonant.room.presence.others().some((p) => p.drag))
  assert.deepEqual(await evalRoom(B.page, (r, id) => r.workflow.block(id).position, dragId), startPos)
  await A.page.mouse.up()
  await B.page.waitForFunction(([id, x]) => window.__resonant.room.workflow.block(id).position.x !== x, [dragId, startPos.x])
  assert.equal(await A.page.evaluate(() => window.__moves), 1, 'a drag writes the document once')

  // Edits made while A's socket is cut arrive after the reconnect.
  await ctlA.cut()
  await A.page.getByTestId('connection-status').filter({ hasText: /reconnecting|connecting/i }).waitFor()
  const before = await nodeCount(B.page)
  await A.page.getByTestId('add-block-delay').click()
  await A.page.getByTestId('save-status').filter({ hasText: /stored on this device/i }).waitFor()
  assert.equal(await nodeCount(B.page), before, 'B does not get it while A is offline')
  await ctlA.restore()
  await A.page.getByTestId('save-status').filter({ hasText: 'Saved' }).waitFor()
  await B.page.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n + 1, before)

  // Remove the unconnected extras so the seeded graph runs, then Run: both pages stream.
  await evalRoom(A.page, (r) => {
    const ids = r.workflow.blocks().filter((b) => !['input', 'ai', 'output'].includes(b.type)).map((b) => b.id)
    r.workflow.removeBlocks(ids)
  })
  const aiId = await evalRoom(A.page, (r) => r.workflow.blocks().find((b) => b.type === 'ai').id)
  await A.page.getByTestId('run').click()
  await A.page.waitForFunction((id) => (document.querySelector(`[data-testid="block-text-${id}"]`)?.textContent ?? '').length > 10, aiId)
  await B.page.waitForFunction((id) => (document.querySelector(`[data-testid="block-text-${id}"]`)?.textContent ?? '').length > 10, aiId)
  await A.page.screenshot({ path: path.join(artifacts, 'editor-mid-run-ada.png') })
  await B.page.screenshot({ path: path.join(artifacts, 'editor-mid-run-bob.png') })

  // B reloads mid-run: the run is replayed, then followed live, with no token twice.
  const running = await evalRoom(A.page, (r) => r.executions().at(-1).state().status)
  assert.equal(running, 'running', 'the run is still going when B reloads')
  await B.page.reload()
  await B.page.waitForFunction(() => window.__resonant?.room?.synced)
  await A.page.getByTestId('execution-status').filter({ hasText: /completed/i }).waitFor({ timeout: 60000 })
  await B.page.getByTestId('execution-status').filter({ hasText: /completed/i }).waitFor({ timeout: 60000 })
  const a = await evalRoom(A.page, (r, id) => { const s = r.executions().at(-1).state(); return { text: s.blocks[id].text, output: s.blocks[id].output, seqs: s.events.map((e) => e.seq) } }, aiId)
  const b = await evalRoom(B.page, (r, id) => { const s = r.executions().at(-1).state(); return { text: s.blocks[id].text, output: s.blocks[id].output, seqs: s.events.map((e) => e.seq) } }, aiId)
  assert.equal(a.text, a.output, 'streamed text is the output')
  assert.equal(b.text, b.output, 'after a reload mid-run: no token duplicated or missed')
  assert.deepEqual(b.seqs, a.seqs)
  assert.deepEqual(a.seqs, a.seqs.map((_, i) => i + 1))
  assert.equal(await text(B.page, `block-text-${aiId}`), b.output)
  await B.page.screenshot({ path: path.join(artifacts, 'editor-after-run-bob.png') })
  console.log(`screenshots: ${artifacts}`)
  await ctxA.close()
  await ctxB.close()
})

test('approve a waiting block, cancel a waiting run, and see a refused run explained', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctx.newPage()
  await page.goto(`${base}/?new&name=Cleo`)
  await page.waitForURL(/workflow=/)
  await page.waitForFunction(() => window.__resonant?.room?.synced && window.__resonant.room.workflow.blocks().length >= 3)

  // input → approval → output, built through the SDK the page uses.
  await evalRoom(page, (r) => {
    const wf = r.workflow
    wf.transact(() => {
      wf.removeBlocks(wf.blocks().map((b) => b.id))
      wf.addBlock({ id: 'in', type: 'input', position: { x: 40, y: 120 } })
      wf.addBlock({ id: 'ok', type: 'human', position: { x: 340, y: 120 }, config: { message: 'Ship it?' } })
      wf.addBlock({ id: 'out', type: 'output', position: { x: 640, y: 120 } })
      wf.connect({ source: 'in', target: 'ok' })
      wf.connect({ source: 'ok', target: 'out', sourceHandle: 'approved' })
    })
  })
  await page.getByTestId('run').click()
  await page.getByTestId('approve-ok').click()
  await page.getByTestId('execution-status').filter({ hasText: /completed/i }).waitFor()
  // The run panel and the canvas node re-render from separate subscriptions: the node may
  // say "completed" a frame after the panel (CI saw it still "waiting" when read at once).
  await page.getByTestId('block-state-ok').filter({ hasText: /^completed$/ }).waitFor()

  // A long delay: Cancel stops it.
  await evalRoom(page, (r) => {
    r.workflow.transact(() => {
      r.workflow.removeBlock('ok')
      r.workflow.addBlock({ id: 'wait', type: 'delay', position: { x: 340, y: 120 }, config: { seconds: 600 } })
      r.workflow.connect({ source: 'in', target: 'wait' })
      r.workflow.connect({ source: 'wait', target: 'out' })
    })
  })
  await page.getByTestId('run').click()
  await page.getByTestId('block-state-wait').filter({ hasText: 'waiting' }).waitFor()
  await page.getByTestId('cancel').click()
  await page.getByTestId('execution-status').filter({ hasText: /cancelled/i }).waitFor()
  // The block that was waiting ends too (it showed "waiting" forever), and its timer note goes.
  await page.getByTestId('block-state-wait').filter({ hasText: 'cancelled' }).waitFor()
  assert.equal(await page.locator('.waiting').count(), 0)

  // No output block: the server's problem is shown, naming what is wrong.
  await evalRoom(page, (r) => r.workflow.removeBlock('out'))
  await page.getByTestId('run').click()
  await page.getByTestId('run-error').filter({ hasText: /output/i }).waitFor()
  await ctx.close()
})

test('the canvas stays and stays editable while the socket is down', async () => {
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  // Routed before the page navigates: a route added while it loads can miss its socket.
  const A = await openEditor(ctxA, `${base}/?new&name=Dora`, 'Dora', controlSockets)
  const ctlA = A.ctl
  await A.ready
  await A.page.waitForURL(/workflow=/)
  await A.page.waitForFunction(() => document.querySelectorAll('[data-testid^="node-"]').length >= 3)
  const workflowId = new URL(A.page.url()).searchParams.get('workflow')
  const B = await openEditor(ctxB, `${base}/?workflow=${workflowId}&name=Eli`, 'Eli')
  await B.ready
  await B.page.waitForFunction(() => document.querySelectorAll('[data-testid^="node-"]').length >= 3)
  const seeded = await nodeCount(A.page)
  // A selection must survive the outage too (it went with the canvas).
  const first = await evalRoom(A.page, (r) => r.workflow.blocks()[0].id)
  await A.page.getByTestId(`node-${first}`).click()
  await A.page.locator(`.react-flow__node.selected [data-testid="node-${first}"]`).waitFor()

  await ctlA.cut()
  await A.page.getByTestId('reconnecting-banner').waitFor()
  assert.equal(await nodeCount(A.page), seeded, 'the canvas is still there while offline')
  assert.equal(await A.page.locator('.react-flow__node.selected').count(), 1, 'the selection is kept')
  // Adding a block offline shows it at once.
  await A.page.getByTestId('add-block-transform').click()
  await A.page.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n + 1, seeded)
  await A.page.getByTestId('save-status').filter({ hasText: /stored on this device/i }).waitFor()
  assert.equal(await nodeCount(B.page), seeded, 'B does not have it yet')

  await ctlA.restore()
  await A.page.getByTestId('save-status').filter({ hasText: 'Saved' }).waitFor()
  await A.page.getByTestId('reconnecting-banner').waitFor({ state: 'detached' })
  await B.page.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n + 1, seeded)
  await ctxA.close()
  await ctxB.close()
})

test('a workflow that does not exist, or an id that is not one, is explained, not retried', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctx.newPage()
  await page.goto(`${base}/?workflow=00000000-0000-4000-8000-00000000dead&name=Fay`)
  await page.getByTestId('room-error-page').filter({ hasText: /does not exist/ }).waitFor()
  assert.equal(await page.getByTestId('room-error').getAttribute('data-code'), 'not-found')
  assert.ok(await page.getByTestId('add-block-ai').isDisabled(), 'nothing can be added to it')
  assert.equal(await page.getByTestId('save-status').count(), 0, 'no "Saved" for a workflow that does not exist')

  await page.goto(`${base}/?workflow=${encodeURIComponent('a/b')}&name=Fay`)
  await page.getByTestId('room-error-page').filter({ hasText: /Invalid workflow id/ }).waitFor()
  assert.equal(await page.getByTestId('room-error').getAttribute('data-code'), 'invalid-room')
  await ctx.close()
})

/**
 * A page that mounts `<ResonantProvider options>` (which owns its client) around one room and
 * can unmount it: the SDK's React packages bundled from source on the fly.
 */
async function providerPage() {
  const entry = `
    import { createElement as h } from 'react'
    import { createRoot } from 'react-dom/client'
    import { ResonantProvider, RoomProvider, useRoom } from '@resonant/react'
    function Grab() { window.__room = useRoom(); return null }
    window.__mount = (workflowId, url) => {
      const root = createRoot(document.getElementById('root'))
      const options = { url, getToken: () => null, user: { id: 'gus', name: 'Gus', color: '#888' } }
      root.render(h(ResonantProvider, { options }, h(RoomProvider, { workflowId }, h(Grab))))
      window.__unmount = () => root.unmount()
    }`
  const out = await build({
    stdin: { contents: entry, resolveDir: here, loader: 'js' },
    bundle: true,
    write: false,
    format: 'iife',
    conditions: ['source'],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  })
  return `<!doctype html><html><body><div id="root"></div><script>${out.outputFiles[0].text.replace(/<\/script/gi, '<\\/script')}</script></body></html>`
}

test('unmounting <ResonantProvider> keeps the room until its offline changes are stored', async () => {
  const html = await providerPage()
  const workspaces = await (await fetch(`${base}/api/v1/workspaces`)).json()
  const wf = await (
    await fetch(`${base}/api/v1/workspaces/${workspaces.items[0].id}/workflows`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'provider unmount' }),
    })
  ).json()
  const ctx = await browser.newContext()
  const page = await ctx.newPage()
  page.on('pageerror', (e) => console.error('[provider page] page error:', e))
  const ctl = await controlSockets(page)
  // Served from loopback (a routed page counts as public, and Chromium then blocks its
  // sockets to 127.0.0.1).
  const site = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html))
  await new Promise((r) => site.listen(0, '127.0.0.1', r))
  await page.goto(`http://127.0.0.1:${site.address().port}/`)
  await page.evaluate(([id, url]) => window.__mount(id, url), [wf.id, base])
  await page.waitForFunction(() => window.__room?.synced)

  // Offline: the edit exists only in this page when the provider unmounts.
  await ctl.cut()
  await page.waitForFunction(() => window.__room.saveStatus === 'offline' || window.__room.status !== 'connected')
  await page.evaluate(() => {
    window.__room.workflow.addBlock({ id: 'kept', type: 'input', position: { x: 0, y: 0 } })
    window.__unmount()
  })
  // Past the unmount's deferral: the room must still be alive, waiting to store the edit.
  await page.waitForFunction(() => new Promise((r) => setTimeout(() => r(true), 300)))
  assert.notEqual(await page.evaluate(() => window.__room.status), 'disconnected', 'the room outlives the unmount')
  await ctl.restore()
  await page.waitForFunction(() => window.__room.status === 'disconnected', null, { timeout: 15000 })

  const other = await ctx.newPage()
  await other.goto(`${base}/?workflow=${wf.id}&name=Hal`)
  await other.waitForFunction(() => !!window.__resonant?.room?.workflow.block('kept'), null, { timeout: 15000 })
  await ctx.close()
  site.close()
})
