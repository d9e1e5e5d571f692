// The REST client's workflows-in-production calls against the real server: workspace secrets,
// webhook and schedule triggers, publishing a version, and the run history filtered by trigger.
import crypto from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RestClient, RestError, type ResonantClient } from '../src/index.js'
import { client, startServer, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  // Secrets and webhook secrets are sealed with the server's key: without one they are refused.
  server = await startServer(['--encryption-key', crypto.randomBytes(32).toString('hex')])
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

describe('RestClient: triggers, secrets, publishing', () => {
  it('sets, lists (names only) and deletes workspace secrets', async () => {
    const rest = new RestClient({ url: server.url })
    const [ws] = (await rest.workspaces.list()).items
    const added = await rest.secrets.set(ws!.id, 'API_TOKEN', 'first-value')
    expect(added.name).toBe('API_TOKEN')
    await rest.secrets.set(ws!.id, 'API_TOKEN', 'second-value')
    const list = await rest.secrets.list(ws!.id)
    expect(list.items.map((s) => s.name)).toEqual(['API_TOKEN'])
    expect(JSON.stringify(list)).not.toContain('value')
    const bad = await rest.secrets.set(ws!.id, '1-bad', 'whatever').catch((e: unknown) => e)
    expect(bad).toBeInstanceOf(RestError)
    expect((bad as RestError).field).toBe('name')
    await rest.secrets.delete(ws!.id, 'API_TOKEN')
    expect((await rest.secrets.list(ws!.id)).items).toEqual([])
  })

  it('creates webhook and schedule triggers, rotates, publishes, and filters runs by trigger', async () => {
    const rest = new RestClient({ url: server.url })
    const [ws] = (await rest.workspaces.list()).items
    const wf = await rest.workflows.create(ws!.id, { name: 'Hooked' })
    const editor = client(server.url, 'ada')
    clients.push(editor)
    const room = editor.enterRoom(wf.id).room
    await room.whenSynced()
    room.workflow.transact(() => {
      room.workflow.addBlock({ id: 'in', type: 'input', position: { x: 0, y: 0 } })
      room.workflow.addBlock({ id: 'out', type: 'output', position: { x: 300, y: 0 } })
      room.workflow.connect({ source: 'in', target: 'out' })
    })
    await room.whenSaved()

    const hook = await rest.triggers.create(wf.id, { kind: 'webhook', name: 'CI', auth: 'bearer', target: 'published' })
    expect(hook).toMatchObject({ kind: 'webhook', auth: 'bearer', target: 'published', enabled: true, name: 'CI' })
    expect(hook.url).toMatch(new RegExp(`/hooks/${hook.id}$`))
    expect(hook.secret).toMatch(/^whsec_/)
    expect(hook.secret!.endsWith(hook.secretLast4!)).toBe(true)

    const daily = await rest.triggers.create(wf.id, { kind: 'schedule', cron: '0 9 * * *', timezone: 'Europe/Paris', missed: 'run-once' })
    expect(daily.nextFireTimes).toHaveLength(3)
    expect(daily.nextFireTimes[1]! - daily.nextFireTimes[0]!).toBeGreaterThanOrEqual(23 * 3600_000)
    const off = await rest.triggers.update(daily.id, { enabled: false })
    expect([off.enabled, off.nextFireTimes]).toEqual([false, []])
    expect((await rest.triggers.list(wf.id)).items.map((t) => t.id).sort()).toEqual([hook.id, daily.id].sort())

    const rotated = await rest.triggers.rotateSecret(hook.id)
    expect(rotated.secret).not.toBe(hook.secret)
    expect((await rest.triggers.get(hook.id)).secret).toBe(rotated.secret)

    // Nothing published yet: the hook starts nothing. Published: it runs that version.
    const call = () =>
      fetch(rotated.url!.replace(/^https?:\/\/[^/]+/, server.url), {
        method: 'POST',
        headers: { authorization: `Bearer ${rotated.secret}`, 'content-type': 'application/json' },
        body: JSON.stringify({ n: 1 }),
      })
    expect((await call()).status).toBe(409)
    const v = await rest.versions.create(wf.id, { name: 'live' })
    const published = await rest.versions.publish(wf.id, v.version)
    expect(published).toMatchObject({ workflowId: wf.id, publishedVersionId: v.id, version: v.version })
    expect((await rest.workflows.get(wf.id)).publishedVersionId).toBe(v.id)
    const res = await call()
    expect(res.status).toBe(202)
    const { executionId } = (await res.json()) as { executionId: string }
    await rest.executions.start(wf.id, { input: {} })

    const byHook = await rest.executions.list(wf.id, { triggerId: hook.id })
    expect(byHook.items.map((e) => [e.id, e.triggerId, e.versionId])).toEqual([[executionId, hook.id, v.id]])
    const manual = await rest.executions.list(wf.id, { triggerId: 'manual' })
    expect(manual.items).toHaveLength(1)
    expect(manual.items[0]!.triggerId ?? null).toBeNull()

    expect((await rest.versions.unpublish(wf.id)).publishedVersionId ?? null).toBeNull()
    await rest.triggers.delete(daily.id)
    expect((await rest.triggers.list(wf.id)).items.map((t) => t.id)).toEqual([hook.id])
  })
})
