// The demo as a product: the workflow list (create, rename, open by link), version history
// (save, change, restore) and comments on a block, in Debian's Chromium against the real server.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { startServerAndBrowser } from './harness.mjs'

let env

before(async () => {
  env = await startServerAndBrowser()
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

const rest = async (path, init) => {
  const res = await fetch(`${env.base}/api/v1${path}`, init)
  assert.ok(res.ok, `${path}: ${res.status}`)
  return res.json()
}

test('workflow list: create, rename, open by link; versions: save, change, restore; comments on a block', async () => {
  const { browser, base } = env
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctxA.newPage()
  page.on('pageerror', (e) => console.error('[Ivy] page error:', e))

  // The list, then a new named workflow from it: the editor opens with the starter graph.
  await page.goto(`${base}/?name=Ivy`)
  await page.getByTestId('workflow-list').waitFor()
  await page.getByTestId('new-workflow-name').fill('Onboarding flow')
  await page.getByTestId('create-workflow').click()
  await page.waitForURL(/workflow=/)
  const id = new URL(page.url()).searchParams.get('workflow')
  await page.getByTestId('node-output').waitFor()
  await until('the name in the header', async () => (await page.getByTestId('workflow-name').textContent()) === 'Onboarding flow')

  // Fit to view: every block of the new workflow is inside the canvas.
  const canvas = await page.locator('.canvas').boundingBox()
  for (const b of ['input', 'ai', 'output']) {
    await until(`${b} inside the canvas`, async () => {
      const box = await page.getByTestId(`node-${b}`).boundingBox()
      return box && box.x >= canvas.x && box.y >= canvas.y && box.x + box.width <= canvas.x + canvas.width && box.y + box.height <= canvas.y + canvas.height
    })
  }

  // Rename from the editor's header; the server has the new name.
  await page.getByTestId(`rename-${id}`).click()
  await page.getByTestId('rename-input').fill('Onboarding v2')
  await page.getByTestId('rename-input').press('Enter')
  await until('the new name', async () => (await page.getByTestId('workflow-name').textContent()) === 'Onboarding v2')
  assert.equal((await rest(`/workflows/${id}`)).name, 'Onboarding v2')

  // Back to the list: the workflow is there by its new name, and its link opens it elsewhere.
  await page.getByTestId('back-to-list').click()
  await page.getByTestId(`workflow-row-${id}`).waitFor()
  assert.equal(await page.getByTestId(`workflow-row-${id}`).getAttribute('data-name'), 'Onboarding v2')
  const link = await page.getByTestId(`copy-link-${id}`).getAttribute('data-link')
  assert.equal(link, `${base}/?workflow=${id}`)
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const other = await ctxB.newPage()
  await other.goto(`${link}&name=Jon`)
  await other.getByTestId('node-output').waitFor()
  await until('the name for Jon', async () => (await other.getByTestId('workflow-name').textContent()) === 'Onboarding v2')

  // Open it from the list again (no reload: the list's link navigates in place).
  await page.getByTestId(`open-${id}`).click()
  await page.getByTestId('node-output').waitFor()

  // New blocks land in view and do not stack.
  for (let i = 0; i < 3; i++) await page.getByTestId('add-block-delay').click()
  const added = await until('three delay blocks', async () => {
    const boxes = await page.locator('.block-node.type-delay').evaluateAll((els) => els.map((e) => e.getBoundingClientRect().toJSON()))
    return boxes.length === 3 ? boxes : null
  })
  for (let i = 0; i < added.length; i++) {
    for (let j = i + 1; j < added.length; j++) {
      const [a, b] = [added[i], added[j]]
      const overlap = a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
      assert.ok(!overlap, `new blocks ${i} and ${j} overlap`)
    }
  }

  // Save a version, change the document, restore: the change is undone for both users.
  await page.getByTestId('tab-versions').click()
  await page.getByTestId('version-name').fill('with delays')
  await page.getByTestId('save-version').click()
  await page.getByTestId('version-1').waitFor()
  await page.getByTestId('node-output').click()
  await page.getByTestId('delete-block').click()
  await page.getByTestId('node-output').waitFor({ state: 'detached' })
  await other.getByTestId('node-output').waitFor({ state: 'detached' })
  await page.getByTestId('restore-1').click()
  await page.getByTestId('confirm-restore-1').click()
  await page.getByTestId('node-output').waitFor()
  await other.getByTestId('node-output').waitFor()
  await page.getByTestId('restored-note').waitFor()
  assert.equal(await page.locator('.block-node.type-delay').count(), 3)

  // A comment on the AI block: added, shown with the block, stored with its blockId, deleted.
  await page.getByTestId('node-ai').click()
  await page.getByTestId('tab-comments').click()
  await until('the panel on the ai block', async () => (await page.getByTestId('comments-panel').getAttribute('data-block')) === 'ai')
  await page.getByTestId('no-comments').waitFor()
  // Jon watches every comment of the workflow (no block selected).
  await other.getByTestId('tab-comments').click()
  await other.getByTestId('no-comments').waitFor()
  await page.getByTestId('comment-input').fill('Shorter prompt, please')
  await page.getByTestId('add-comment').click()
  const comment = page.getByTestId('comment').filter({ hasText: 'Shorter prompt, please' })
  await comment.waitFor()
  assert.equal(await comment.getAttribute('data-block'), 'ai')
  // It reaches Jon's open panel and card at once (a broadcast event), well inside the 15 s poll.
  await until('the comment at Jon', async () => (await other.getByTestId('comment').filter({ hasText: 'Shorter prompt, please' }).count()) === 1, 5000)
  await until('the badge at Jon', async () => (await other.getByTestId('comment-count-ai').count()) === 1, 5000)
  const stored = await rest(`/workflows/${id}/comments?blockId=ai`)
  assert.equal(stored.items.length, 1)
  assert.equal(stored.items[0].content, 'Shorter prompt, please')
  // The card shows it has a comment; the badge goes with the comment.
  await until('the badge on the card', async () => (await page.getByTestId('comment-count-ai').count()) === 1 && (await page.getByTestId('comment-count-ai').textContent()).includes('1'))
  await page.getByTestId(`delete-comment-${stored.items[0].id}`).click()
  await page.getByTestId('no-comments').waitFor()
  assert.equal((await rest(`/workflows/${id}/comments`)).items.length, 0)
  await page.getByTestId('comment-count-ai').waitFor({ state: 'detached' })

  await ctxA.close()
  await ctxB.close()
})

test('structured editors: retry, switch cases and webhook headers are forms that write the document', async () => {
  const { browser, base } = env
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctx.newPage()
  page.on('pageerror', (e) => console.error('[Kim] page error:', e))
  await page.goto(`${base}/?new&name=Kim`)
  await page.getByTestId('node-output').waitFor()
  const config = (id) => page.evaluate((b) => window.__resonant.room.workflow.blocks().find((x) => x.id === b)?.config, id)

  // Retry on the AI block: attempts and which failures retry.
  await page.getByTestId('node-ai').click()
  await page.getByTestId('field-retry-attempts').fill('5')
  await page.getByTestId('field-retry-attempts').press('Enter')
  await until('attempts stored', async () => (await config('ai'))?.retry?.attempts === 5)
  await page.getByTestId('field-retry-retryOn-server').uncheck()
  await until('retryOn without server', async () => {
    const on = (await config('ai'))?.retry?.retryOn
    return Array.isArray(on) && !on.includes('server') && on.includes('timeout')
  })

  // A condition as a switch: a case becomes a handle on the card.
  await page.getByTestId('add-block-condition').click()
  const cond = await until('the condition block', async () => page.evaluate(() => window.__resonant.room.workflow.blocks().find((b) => b.type === 'condition')?.id))
  await page.getByTestId(`node-${cond}`).click()
  await page.getByTestId('field-cases-add').click()
  await page.getByTestId('field-cases-handle-0').fill('long')
  await page.getByTestId('field-cases-handle-0').press('Enter')
  await page.getByTestId('field-cases-expression-0').fill('upstream | length > 100')
  await page.getByTestId('field-cases-expression-0').press('Enter')
  await until('the case stored', async () => JSON.stringify((await config(cond))?.cases) === JSON.stringify([{ handle: 'long', expression: 'upstream | length > 100' }]))
  await page.getByTestId(`node-${cond}`).getByTestId('handle-source-long').waitFor()

  // Webhook headers as name → value rows.
  await page.getByTestId('add-block-webhook').click()
  const hook = await until('the webhook block', async () => page.evaluate(() => window.__resonant.room.workflow.blocks().find((b) => b.type === 'webhook')?.id))
  await page.getByTestId(`node-${hook}`).click()
  await page.getByTestId('field-headers-add').click()
  await page.getByTestId('field-headers-new-key').fill('Authorization')
  await page.getByTestId('field-headers-new-key').press('Enter')
  await page.getByTestId('field-headers-value-0').fill('Bearer {{ input.token }}')
  await page.getByTestId('field-headers-value-0').press('Enter')
  await until('the header stored', async () => (await config(hook))?.headers?.Authorization === 'Bearer {{ input.token }}')
  await ctx.close()
})
