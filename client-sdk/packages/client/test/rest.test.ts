import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RestClient, RestError, type ResonantClient, type Schemas } from '../src/index.js'
import { client, startServer, untilDoc, type Server } from './helpers.js'

let server: Server
const clients: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  for (const c of clients) c.destroy()
  await server?.stop()
})

async function refusal(p: Promise<unknown>): Promise<RestError> {
  const e = await p.then(
    () => null,
    (e: unknown) => e,
  )
  expect(e).toBeInstanceOf(RestError)
  return e as RestError
}

describe('RestClient', () => {
  it('creates, lists, renames and reads a workflow, its versions, comments and executions', async () => {
    const rest = new RestClient({ url: server.url })
    const me: Schemas['User'] = await rest.me()
    expect(me.id).toBeTruthy()
    const [ws] = (await rest.workspaces.list()).items
    expect(ws).toBeTruthy()

    const wf = await rest.workflows.create(ws!.id, { name: 'Summariser' })
    await rest.workflows.update(wf.id, { name: 'Summariser v2' })
    expect((await rest.workflows.get(wf.id)).name).toBe('Summariser v2')
    const names: string[] = []
    for await (const w of rest.all((cursor) => rest.workflows.list(ws!.id, { limit: 1, cursor }))) names.push(w.name)
    expect(names).toContain('Summariser v2')

    // An edit made through a room is what REST reads, saves and restores.
    const editor = client(server.url, 'ada')
    clients.push(editor)
    const room = editor.enterRoom(wf.id).room
    await room.whenSynced()
    const gen = room.workflow.addBlock({ id: 'gen', type: 'ai', position: { x: 0, y: 0 } })
    await room.whenSaved()
    expect((await rest.workflows.content(wf.id)).blocks?.map((b) => b.id)).toEqual([gen])
    const v1 = await rest.versions.create(wf.id, { name: 'one block' })
    room.workflow.removeBlocks([gen])
    await room.whenSaved()
    expect((await rest.versions.list(wf.id)).items.map((v) => v.version)).toEqual([v1.version])
    await rest.versions.restore(wf.id, v1.version)
    await untilDoc(room, () => room.workflow.blocks().some((b) => b.id === gen), 'the restored block reaches the editor')

    const c = await rest.comments.create(wf.id, { content: 'looks good', blockId: gen })
    await rest.comments.update(c.id, { content: 'looks great' })
    expect((await rest.comments.list(wf.id, { blockId: gen })).items.map((x) => x.content)).toEqual(['looks great'])
    await rest.comments.delete(c.id)
    expect((await rest.comments.list(wf.id)).items).toEqual([])

    expect((await rest.executions.list(wf.id)).items).toEqual([])
    // One `ai` block with no input or output: the engine refuses it, naming the problem.
    const refused = await refusal(rest.executions.start(wf.id))
    expect(refused.status).toBe(422)
    expect(refused.code).toBe('invalid_workflow')
    expect(refused.body?.error.problems?.length).toBeGreaterThan(0)
  })

  it('turns refusals and unreachable servers into typed errors', async () => {
    const rest = new RestClient({ url: server.url })
    const missing = await refusal(rest.workflows.get('no-such-workflow'))
    expect([missing.status, missing.code]).toEqual([404, 'not_found'])
    const [ws] = (await rest.workspaces.list()).items
    const bad = await refusal(rest.workflows.create(ws!.id, { name: '' }))
    expect([bad.status, bad.code, bad.field]).toEqual([400, 'bad_request', 'name'])

    const down = new RestClient({ url: 'http://127.0.0.1:9' })
    const e = await refusal(down.me())
    expect([e.status, e.code]).toEqual([0, 'network'])
  })

  it('sends the token and maps ws://…/sync URLs', async () => {
    const seen: string[] = []
    const rest = new RestClient({
      url: server.url.replace('http:', 'ws:') + '/sync',
      getToken: () => 'not-a-real-token',
      fetch: (input, init) => {
        seen.push(`${String(input)} ${(init?.headers as Record<string, string>).authorization}`)
        return fetch(input, init)
      },
    })
    // Development mode may refuse a token it cannot verify; what matters is what was sent.
    await rest.me().catch(() => undefined)
    expect(seen).toEqual([`${server.url}/api/v1/me Bearer not-a-real-token`])
  })
})
