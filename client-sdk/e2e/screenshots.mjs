// Screenshots of the demo's views for docs/images/: the workflow list, the editor with the
// block panel open, comments on a block, version history, the structured field editors, two
// users mid-run. Run after building the server:
//   RESONANT_BIN=… node e2e/screenshots.mjs
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServerAndBrowser } from './harness.mjs'

const images = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/images')
// The demo provider streams slowly enough that a run can be caught half way.
const env = await startServerAndBrowser({ serverArgs: ['--demo-delay-ms', '40'] })
const { base, browser } = env
const api = async (p, body, method = body ? 'POST' : 'GET') => {
  const res = await fetch(`${base}/api/v1${p}`, { method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) })
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${await res.text()}`)
  return res.status === 204 ? null : res.json()
}

try {
  const ws = (await api('/workspaces')).items[0]
  for (const name of ['Support triage', 'Weekly digest', 'Lead scoring']) await api(`/workspaces/${ws.id}/workflows`, { name })
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 })
  const page = await ctx.newPage()
  await page.goto(`${base}/?name=Ada%20Lovelace`)
  await page.getByTestId('new-workflow-name').fill('Blog post writer')
  await page.getByTestId('create-workflow').click()
  await page.waitForURL(/workflow=/)
  const id = new URL(page.url()).searchParams.get('workflow')
  await page.getByTestId('node-output').waitFor()

  // A condition with two handles, so the cards show their labels.
  await page.getByTestId('add-block-condition').click()
  await page.getByTestId('node-ai').click()
  await page.getByTestId('inspector').waitFor()
  await page.screenshot({ path: path.join(images, 'demo-editor.png') })

  await page.getByTestId('tab-versions').click()
  await page.getByTestId('version-name').fill('First draft')
  await page.getByTestId('save-version').click()
  await page.getByTestId('version-1').waitFor()
  await page.getByTestId('add-block-human').click()
  await page.getByTestId('version-name').fill('With an approval step')
  await page.getByTestId('save-version').click()
  await page.getByTestId('version-2').waitFor()
  await page.getByTestId('restore-1').click()
  await page.getByTestId('confirm-restore-1').waitFor()
  await page.screenshot({ path: path.join(images, 'demo-versions.png') })
  await page.getByRole('button', { name: 'Cancel' }).click()

  await api(`/workflows/${id}/comments`, { content: 'Can we make the tone friendlier?', blockId: 'ai' })
  await api(`/workflows/${id}/comments`, { content: 'Agreed, and cap it at 280 characters.', blockId: 'ai' })
  await page.getByTestId('node-ai').click()
  await page.getByTestId('tab-comments').click()
  await page.getByTestId('comment').nth(1).waitFor()
  await page.getByTestId('comment-input').fill('Done in the prompt, see v3')
  await page.screenshot({ path: path.join(images, 'demo-comments.png') })

  // The structured editors: a switch's cases as rows.
  await page.getByTestId('tab-block').click()
  const cond = await page.evaluate(() => window.__resonant.room.workflow.blocks().find((b) => b.type === 'condition').id)
  await page.getByTestId(`node-${cond}`).click()
  await page.getByTestId('field-cases-add').click()
  await page.getByTestId('field-cases-handle-0').fill('long')
  await page.getByTestId('field-cases-handle-0').press('Enter')
  await page.getByTestId('field-cases-expression-0').fill('upstream | length > 280')
  await page.getByTestId('field-cases-expression-0').press('Enter')
  await page.getByTestId('field-cases-add').click()
  await page.getByTestId(`node-${cond}`).getByTestId('handle-source-case2').waitFor()
  await page.getByTestId('field-retry').scrollIntoViewIfNeeded()
  await page.screenshot({ path: path.join(images, 'demo-structured-fields.png') })

  // Two users mid-run: Grace watches (her cursor on the canvas) while Ada's run streams.
  await page.getByTestId(`node-${cond}`).click()
  await page.getByTestId('delete-block').click()
  const human = await page.evaluate(() => window.__resonant.room.workflow.blocks().find((b) => b.type === 'human')?.id)
  if (human) await page.evaluate((h) => window.__resonant.room.workflow.removeBlocks([h]), human)
  const ctxG = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 })
  const grace = await ctxG.newPage()
  await grace.goto(`${base}/?workflow=${id}&name=Grace%20Hopper`)
  await grace.getByTestId('node-ai').waitFor()
  const box = await page.locator('.react-flow__pane').boundingBox()
  await page.mouse.move(box.x + box.width * 0.55, box.y + box.height * 0.6)
  await page.mouse.move(box.x + box.width * 0.57, box.y + box.height * 0.62)
  await grace.getByTestId('remote-cursor-Ada Lovelace').waitFor()
  await page.getByTestId('tab-block').click()
  await page.getByTestId('run').click()
  await grace.waitForFunction(() => (document.querySelector('[data-testid="block-text-ai"]')?.textContent ?? '').length > 40)
  await grace.screenshot({ path: path.join(images, 'demo-two-users-mid-run.png') })
  await ctxG.close()

  await page.getByTestId('back-to-list').click()
  await page.getByTestId(`workflow-row-${id}`).waitFor()
  await page.screenshot({ path: path.join(images, 'demo-workflow-list.png') })
  await ctx.close()
  console.log(`screenshots in ${images}`)
} finally {
  await env.stop()
}
