// Workflows in production, in Debian's Chromium against the real server: a webhook trigger made
// in the Triggers tab, its URL and secret copied to the clipboard, a call from outside, and the
// run appearing live in the History tab; a schedule's next fire times; error routes on the canvas.
import crypto from 'node:crypto'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { startServerAndBrowser } from './harness.mjs'

let env

before(async () => {
  env = await startServerAndBrowser({
    // Trigger secrets are sealed with the server's key; the hook URL must name this server.
    serverArgs: ['--demo-delay-ms', '5', '--encryption-key', crypto.randomBytes(32).toString('hex')],
    publicUrl: true,
  })
})

after(async () => {
  await env?.stop()
})

/** Polls `f` until it returns a truthy value; fails after `ms`. */
async function until(what, f, ms = 10_000) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await f()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function openNewWorkflow(name) {
  const { browser, base } = env
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base })
  const page = await ctx.newPage()
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e))
  await page.goto(`${base}/?new&name=${name}`)
  await page.getByTestId('node-output').waitFor()
  return { ctx, page }
}

/** Clicks a Copy button, waits for it to say so, and reads what the clipboard holds. */
async function copy(page, testid) {
  await page.getByTestId(testid).click()
  await page.locator(`[data-testid="${testid}"][data-state="copied"]`).waitFor()
  return page.evaluate(() => navigator.clipboard.readText())
}

test('a webhook trigger: copy its URL and secret, call it from outside, watch the run arrive live', async () => {
  const { base } = env
  const { ctx, page } = await openNewWorkflow('Hana')
  const id = new URL(page.url()).searchParams.get('workflow')
  // A hook's input is {body, headers, query, trigger}: the starter graph's prompt reads the
  // topic from the body. The trigger runs the draft as the server stores it.
  await page.evaluate(async () => {
    const room = window.__resonant.room
    room.workflow.updateBlock('ai', { config: { userPromptTemplate: 'Write one line about {{ input.body.topic }}' } })
    await room.whenSaved()
  })

  // A bearer webhook that runs the draft.
  await page.getByTestId('tab-triggers').click()
  await page.getByTestId('no-triggers').waitFor()
  await page.getByTestId('trigger-kind').selectOption('webhook')
  await page.getByTestId('trigger-auth').selectOption('bearer')
  await page.getByTestId('trigger-target').selectOption('draft')
  await page.getByTestId('trigger-name').fill('Deploy hook')
  await page.getByTestId('create-trigger').click()
  const item = page.locator('[data-testid^="trigger-"][data-kind="webhook"]')
  await item.waitFor()
  const triggerId = (await item.getAttribute('data-testid')).slice('trigger-'.length)

  // URL and secret through the clipboard, as a user would paste them elsewhere.
  const url = await copy(page, `copy-url-${triggerId}`)
  assert.equal(url, `${base}/hooks/${triggerId}`)
  const secret = await copy(page, `copy-secret-${triggerId}`)
  assert.match(secret, /^whsec_/)
  assert.equal(secret, await page.getByTestId(`trigger-secret-${triggerId}`).inputValue())

  // The history is empty; the page is not reloaded from here on.
  await page.getByTestId('tab-history').click()
  await page.getByTestId('no-runs').waitFor()
  await page.evaluate(() => (window.__sameDocument = true))

  // A call from outside the browser.
  const res = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ topic: 'rivers' }),
  })
  assert.equal(res.status, 202, await res.clone().text())
  const { executionId } = await res.json()

  // It appears, named by its trigger, and reaches completed: all from the room's events.
  const row = page.getByTestId(`run-${executionId}`)
  await row.waitFor()
  await until('the run named by its trigger', async () => (await page.getByTestId(`run-trigger-${executionId}`).textContent()).includes('Deploy hook'))
  await page.locator(`[data-testid="run-${executionId}"][data-status="completed"]`).waitFor({ timeout: 20_000 }).catch(async (e) => {
    const stored = await (await fetch(`${base}/api/v1/executions/${executionId}`)).json()
    throw new Error(`${e.message}\nrow: ${await row.getAttribute('data-status')} ${await row.textContent()}\nstored: ${stored.status} ${stored.error}`)
  })
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was reloaded')
  assert.match(await row.textContent(), /tokens/)

  // The server agrees; the filters find it by its trigger and not among manual runs.
  const stored = await (await fetch(`${base}/api/v1/executions/${executionId}`)).json()
  assert.equal(stored.triggerId, triggerId)
  assert.equal(stored.status, 'completed')
  assert.equal(stored.workflowId, id)
  await page.getByTestId('runs-trigger').selectOption('manual')
  await page.getByTestId('no-runs').waitFor()
  await page.getByTestId('runs-trigger').selectOption(triggerId)
  await row.waitFor()
  await ctx.close()
})

test('a schedule shows its next three fire times in its own time zone; error routes on the canvas', async () => {
  const { ctx, page } = await openNewWorkflow('Ivo')

  await page.getByTestId('tab-triggers').click()
  await page.getByTestId('trigger-kind').selectOption('schedule')
  await page.getByTestId('trigger-cron').fill('30 9 * * *')
  await page.getByTestId('trigger-timezone').fill('Asia/Tokyo')
  await page.getByTestId('trigger-missed').selectOption('run-once')
  await page.getByTestId('create-trigger').click()
  const item = page.locator('[data-testid^="trigger-"][data-kind="schedule"]')
  await item.waitFor()
  const triggerId = (await item.getAttribute('data-testid')).slice('trigger-'.length)
  const fires = page.getByTestId(`next-fires-${triggerId}`).locator('li')
  await until('three fire times', async () => (await fires.count()) === 3)
  for (const t of await fires.allTextContents()) assert.match(t, /09:30/, t)
  // Off: no upcoming run.
  // (A controlled checkbox: it changes when the server has answered.)
  await page.getByTestId(`trigger-enabled-${triggerId}`).click()
  await page.getByTestId(`next-fires-${triggerId}`).waitFor({ state: 'detached' })

  // "On error: route" gives the AI block an error handle; an edge from it is drawn red.
  await page.getByTestId('tab-block').click()
  await page.getByTestId('node-ai').click()
  await page.getByTestId('field-onError').selectOption('route')
  const handle = page.getByTestId('node-ai').getByTestId('handle-source-error')
  await handle.waitFor()
  await page.evaluate(() => window.__resonant.room.workflow.connect({ source: 'ai', target: 'output', sourceHandle: 'error' }))
  await page.locator('.react-flow__edge.resonant-error-route').waitFor()
  // Back to "fail": the edge is one Run refuses, still shown so it can be deleted.
  await page.getByTestId('field-onError').selectOption('')
  await handle.waitFor({ state: 'detached' })
  await page.locator('.react-flow__edge.resonant-invalid').waitFor()

  // The workflow's error handler comes from the palette: no input handle, one output.
  await page.getByTestId('add-block-errorHandler').click()
  const handler = page.locator('.block-node.type-errorHandler')
  await handler.waitFor()
  assert.equal(await handler.locator('.react-flow__handle-left.connectable').count(), 0)
  assert.equal(await handler.locator('.react-flow__handle-right').count(), 1)
  await ctx.close()
})
