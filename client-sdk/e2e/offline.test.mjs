// Browser test of offline persistence: the demo editor in Debian's Chromium (playwright-core),
// its sync socket cut by the test, edits kept in IndexedDB through a reload and a closed tab,
// then delivered to another user once the socket is back.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServerAndBrowser } from './harness.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const artifacts = path.join(here, 'artifacts')
mkdirSync(artifacts, { recursive: true })

let env, base, browser

before(async () => {
  env = await startServerAndBrowser({ serverArgs: ['--demo-delay-ms', '5'] })
  base = env.base
  browser = env.browser
})

after(async () => {
  await env?.stop()
})

/**
 * Routes a page's sync sockets through the test, which can refuse them (a dead network: a
 * browser's offline mode does not touch WebSockets). The route stays across reloads.
 */
async function routeSockets(page) {
  const ctl = { offline: false, sockets: new Set() }
  await page.routeWebSocket(/\/sync\//, (ws) => {
    if (ctl.offline) {
      ws.close({ code: 4000, reason: 'test: offline' })
      return
    }
    const upstream = ws.connectToServer()
    const pair = { ws, upstream }
    ctl.sockets.add(pair)
    ws.onMessage((m) => upstream.send(m))
    upstream.onMessage((m) => ws.send(m))
    ws.onClose(() => ctl.sockets.delete(pair))
    upstream.onClose(() => ctl.sockets.delete(pair))
  })
  ctl.cut = async () => {
    ctl.offline = true
    for (const p of [...ctl.sockets]) {
      await p.ws.close({ code: 4000, reason: 'test: network cut' }).catch(() => {})
      await p.upstream.close().catch(() => {})
    }
    ctl.sockets.clear()
  }
  return ctl
}

const nodes = (page) => page.locator('[data-testid^="node-"]').count()
const blockIds = (page) => page.evaluate(() => window.__resonant.room.workflow.blocks().map((b) => b.id).sort())

test('offline edits survive a reload and a closed tab, say "stored on this device", and reach the other user on reconnect', async () => {
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  let page = await ctxA.newPage()
  page.on('pageerror', (e) => console.error('[Ada] page error:', e))
  let ctl = await routeSockets(page)
  await page.goto(`${base}/?new&name=Ada`)
  await page.waitForURL(/workflow=/)
  await page.waitForFunction(() => window.__resonant?.room?.synced && window.__resonant.room.workflow.blocks().length >= 3)
  await page.getByTestId('save-status').filter({ hasText: 'Saved' }).waitFor()
  const url = page.url()
  const workflowId = new URL(url).searchParams.get('workflow')
  const seeded = await nodes(page)

  // The network dies; an edit is stored on this device, not on the server.
  await ctl.cut()
  await page.getByTestId('connection-status').filter({ hasText: /reconnecting|connecting/i }).waitFor()
  await page.getByTestId('add-block-delay').click()
  await page.getByTestId('save-status').filter({ hasText: 'stored on this device' }).waitFor()
  const edited = await blockIds(page)
  assert.equal(edited.length, seeded + 1)

  // A reload, still cut off: the editor opens from the local copy, status still "stored".
  await page.reload()
  await page.waitForFunction(() => window.__resonant?.room?.loaded)
  assert.equal(await page.evaluate(() => window.__resonant.room.synced), false, 'not from the server')
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n, seeded + 1)
  assert.deepEqual(await blockIds(page), edited)
  await page.getByTestId('save-status').filter({ hasText: 'stored on this device' }).waitFor()
  await page.screenshot({ path: path.join(artifacts, 'offline-reload.png') })
  // The reloaded editor is editable offline too.
  await page.getByTestId('add-block-transform').click()
  await page.waitForFunction((n) => window.__resonant.room.workflow.blocks().length === n, seeded + 2)
  const edited2 = await blockIds(page)

  // The tab is closed; Bob has got neither edit.
  await page.close()
  const bob = await ctxB.newPage()
  bob.on('pageerror', (e) => console.error('[Bob] page error:', e))
  await bob.goto(`${base}/?workflow=${workflowId}&name=Bob`)
  await bob.waitForFunction(() => window.__resonant?.room?.synced)
  await bob.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n, seeded)
  assert.equal((await blockIds(bob)).length, seeded, 'Bob does not have the offline edits yet')

  // A new tab with the network back: the stored edit goes to the server and reaches Bob.
  page = await ctxA.newPage()
  page.on('pageerror', (e) => console.error('[Ada] page error:', e))
  await page.goto(url)
  await page.waitForFunction(() => window.__resonant?.room?.synced)
  await page.getByTestId('save-status').filter({ hasText: 'Saved' }).waitFor()
  assert.deepEqual(await blockIds(page), edited2)
  await bob.waitForFunction((n) => document.querySelectorAll('[data-testid^="node-"]').length === n, seeded + 2)
  assert.deepEqual(await blockIds(bob), edited2)
  await ctxA.close()
  await ctxB.close()
})
