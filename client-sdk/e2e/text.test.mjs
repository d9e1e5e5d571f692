// Browser test of collaborative text: two users type into the same prompt in the demo's
// inspector at once (Debian's Chromium, playwright-core). Both users' keystrokes survive, each
// caret stays where its user types, and each sees who is typing in which field.
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
  env = await startServerAndBrowser()
  base = env.base
  browser = env.browser
})

after(async () => {
  await env?.stop()
})

async function open(url) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await ctx.newPage()
  page.on('pageerror', (e) => console.error('page error:', e))
  await page.goto(url)
  await page.waitForURL(/workflow=/)
  await page.waitForFunction(() => window.__resonant?.room?.synced && window.__resonant.room.workflow.blocks().length >= 3)
  return { ctx, page }
}

const promptOf = (page) => page.getByTestId('field-userPromptTemplate')

test('two users typing in one prompt keep every keystroke and their carets, and see who types where', async () => {
  const A = await open(`${base}/?new&name=Ada`)
  const workflow = new URL(A.page.url()).searchParams.get('workflow')
  const B = await open(`${base}/?workflow=${workflow}&name=Bob`)
  const ai = await A.page.evaluate(() => window.__resonant.room.workflow.blocks().find((b) => b.type === 'ai').id)
  for (const { page } of [A, B]) await page.getByTestId(`node-${ai}`).click()
  const start = await promptOf(A.page).inputValue()
  assert.ok(start.length > 4, `the seeded prompt: ${start}`)
  await B.page.waitForFunction((s) => document.querySelector('[data-testid="field-userPromptTemplate"]')?.value === s, start)

  // Ada's caret after the first word, Bob's at the end.
  const at = start.indexOf(' ')
  await promptOf(A.page).focus()
  await promptOf(A.page).evaluate((el, i) => el.setSelectionRange(i, i), at)
  await promptOf(B.page).focus()
  await promptOf(B.page).evaluate((el) => el.setSelectionRange(el.value.length, el.value.length))
  await B.page.getByTestId('typing-userPromptTemplate').filter({ hasText: 'Ada is typing' }).waitFor()
  await A.page.getByTestId('typing-userPromptTemplate').filter({ hasText: 'Bob is typing' }).waitFor()

  // Both type at once, key by key.
  await Promise.all([A.page.keyboard.type('-ada-ada', { delay: 15 }), B.page.keyboard.type(' +bob+bob', { delay: 15 })])
  const expected = `${start.slice(0, at)}-ada-ada${start.slice(at)} +bob+bob`
  for (const { page } of [A, B]) {
    await page.waitForFunction((e) => document.querySelector('[data-testid="field-userPromptTemplate"]').value === e, expected)
  }
  await B.page.getByTestId('inspector').screenshot({ path: path.join(artifacts, 'collaborative-text-bob.png') })
  // Each caret is still right after what its user typed.
  assert.equal(await promptOf(A.page).evaluate((el) => el.selectionEnd), at + '-ada-ada'.length)
  assert.equal(await promptOf(B.page).evaluate((el) => el.selectionEnd), expected.length)
  // The document holds the prompt as a Y.Text (the demo bundles its own yjs, so ask its shape).
  const held = await A.page.evaluate((id) => {
    const t = window.__resonant.room.workflow.textOf(id, 'config', 'userPromptTemplate')
    return t ? t.constructor.name + ':' + t.toString() : 'none'
  }, ai)
  assert.ok(held.endsWith(`:${expected}`) && held !== 'none', held)

  // Leaving the field clears the indicator.
  await promptOf(A.page).blur()
  await B.page.getByTestId('typing-userPromptTemplate').waitFor({ state: 'detached' })
  await A.ctx.close()
  await B.ctx.close()
})
