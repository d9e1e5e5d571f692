// @vitest-environment jsdom
// The hooks against a real server, rendered with Testing Library in jsdom: each test watches
// what a component renders while another client (plain SDK, no React) edits the same room.
import * as React from 'react'
import { act, cleanup, render, screen, waitFor } from '@testing-library/react'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import type { ClientOptions, ResonantClient } from '@resonant/client'
import { ReactFlowProvider } from '@xyflow/react'
import { RemoteCursors } from '../src/flow.js'
import { client, newWorkflow, startServer, untilDoc, type Server } from '../../client/test/helpers.js'
import {
  ResonantProvider,
  RoomProvider,
  useBlock,
  useBlocks,
  useBroadcastEvent,
  useEventListener,
  useLoaded,
  useReadOnly,
  useOthers,
  useRoom,
  useSaveStatus,
  useSynced,
  useUndoRedo,
} from '../src/core.js'

let server: Server
const others: ResonantClient[] = []

beforeAll(async () => {
  server = await startServer()
})
afterEach(() => cleanup())
afterAll(async () => {
  for (const c of others) c.destroy()
  await server?.stop()
})

function options(name: string): ClientOptions {
  return {
    url: server.url,
    user: { id: name, name, color: '#4a7' },
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    probeTimeoutMs: 1500,
  }
}

/** Another editor of the room, without React. */
async function otherEditor(workflowId: string, name = 'bob') {
  const c = client(server.url, name)
  others.push(c)
  const room = c.enterRoom(workflowId).room
  await room.whenSynced()
  return room
}

function Harness({ workflowId, children }: { workflowId: string; children: React.ReactNode }) {
  return (
    <ResonantProvider options={options('ada')}>
      <RoomProvider workflowId={workflowId} fallback={<p>entering</p>}>
        {children}
      </RoomProvider>
    </ResonantProvider>
  )
}

describe('@resonant/react hooks', () => {
  it('useLoaded and useBlocks follow the room; a remote edit re-renders only what changed', async () => {
    const wf = await newWorkflow(server)
    const bob = await otherEditor(wf)
    bob.workflow.addBlock({ id: 'a', type: 'input', position: { x: 0, y: 0 } })
    bob.workflow.addBlock({ id: 'b', type: 'output', position: { x: 100, y: 0 } })
    await bob.whenSaved()

    const renders: Record<string, number> = {}
    function Card({ id }: { id: string }) {
      const block = useBlock(id)
      renders[id] = (renders[id] ?? 0) + 1
      return <li>{`${id}:${block?.data.label ?? ''}`}</li>
    }
    function List() {
      const loaded = useLoaded()
      const ids = useBlocks(
        (bs) => bs.map((b) => b.id),
        (x, y) => x.join() === y.join(),
      )
      if (!loaded) return <p>loading</p>
      return (
        <ul>
          {ids.map((id) => (
            <Card key={id} id={id} />
          ))}
        </ul>
      )
    }
    render(
      <Harness workflowId={wf}>
        <List />
      </Harness>,
    )
    await screen.findByText('a:Input')
    expect(screen.getByText('b:Output')).toBeTruthy()
    const before = { ...renders }

    act(() => bob.workflow.updateBlock('a', { data: { label: 'Start' } }))
    await screen.findByText('a:Start')
    expect(renders.a).toBeGreaterThan(before.a!)
    expect(renders.b, 'an edit to block a does not re-render block b').toBe(before.b)
  })

  it('useSaveStatus goes saving → saved for a local edit; useOthers shows the other editor', async () => {
    const wf = await newWorkflow(server)
    const seen: string[] = []
    let add: (() => void) | null = null
    function Status() {
      const status = useSaveStatus()
      const room = useRoom()
      const names = useOthers((ps) => ps.map((p) => p.user.name).join(','))
      if (seen[seen.length - 1] !== status) seen.push(status)
      add = () => room.workflow.addBlock({ type: 'input', position: { x: 0, y: 0 } })
      return <p>{`status:${status} others:${names}`}</p>
    }
    render(
      <Harness workflowId={wf}>
        <Status />
      </Harness>,
    )
    await screen.findByText(/status:saved/)
    const bob = await otherEditor(wf, 'bob')
    await screen.findByText(/others:bob/)
    act(() => add!())
    await screen.findByText(/status:saving/)
    await screen.findByText(/status:saved/)
    await untilDoc(bob, () => bob.workflow.blocks().length === 1, 'the edit reaches bob')
    expect(seen.slice(-2)).toEqual(['saving', 'saved'])
  })

  it('useUndoRedo undoes my edit, not the other editor’s', async () => {
    const wf = await newWorkflow(server)
    const bob = await otherEditor(wf)
    let api: ReturnType<typeof useUndoRedo> | null = null
    let room: ReturnType<typeof useRoom> | null = null
    function Editor() {
      api = useUndoRedo()
      room = useRoom()
      const count = useBlocks((bs) => bs.length)
      return <p>{`blocks:${count} canUndo:${api.canUndo}`}</p>
    }
    render(
      <Harness workflowId={wf}>
        <Editor />
      </Harness>,
    )
    await screen.findByText('blocks:0 canUndo:false')
    await waitFor(() => expect(room!.synced).toBe(true))
    act(() => void room!.workflow.addBlock({ id: 'mine', type: 'input', position: { x: 0, y: 0 } }))
    await screen.findByText('blocks:1 canUndo:true')
    bob.workflow.addBlock({ id: 'theirs', type: 'output', position: { x: 0, y: 0 } })
    await screen.findByText('blocks:2 canUndo:true')
    act(() => api!.undo())
    await screen.findByText('blocks:1 canUndo:false')
    await untilDoc(bob, () => bob.workflow.blocks().map((b) => b.id).join() === 'theirs', 'bob sees only his block')
  })

  it('useEventListener hears the others’ broadcasts, useBroadcastEvent sends mine; useReadOnly', async () => {
    const wf = await newWorkflow(server)
    const bob = await otherEditor(wf)
    const atBob: unknown[] = []
    bob.onBroadcast((e) => atBob.push(e))
    let send: ((e: unknown) => boolean) | null = null
    function Reactions() {
      const [last, setLast] = React.useState('none')
      useEventListener((e) => setLast(JSON.stringify(e)))
      send = useBroadcastEvent()
      const readOnly = useReadOnly()
      const synced = useSynced()
      return <p>{`synced:${synced} readOnly:${readOnly} last:${last}`}</p>
    }
    render(
      <Harness workflowId={wf}>
        <Reactions />
      </Harness>,
    )
    await waitFor(() => expect(screen.getByText(/synced:/).textContent).toContain('synced:true'))
    act(() => void bob.broadcast({ emoji: '👋' }))
    await screen.findByText(/last:\{"emoji":"👋"\}/)
    expect(screen.getByText(/readOnly:false/)).toBeTruthy()
    act(() => void send!('hello bob'))
    await waitFor(() => expect(atBob).toEqual(['hello bob']))
  })

  it('RemoteCursors eases each cursor between reports; the viewport is applied apart, at once', async () => {
    const wf = await newWorkflow(server)
    const bob = await otherEditor(wf)
    render(
      <Harness workflowId={wf}>
        <ReactFlowProvider>
          <RemoteCursors />
        </ReactFlowProvider>
      </Harness>,
    )
    bob.presence.update({ cursor: { x: 120, y: 45 } })
    const el = await waitFor(() => {
      const e = document.querySelector<HTMLElement>('[data-cursor="bob"]')
      if (!e || !e.style.transform.includes('120px')) throw new Error('no cursor for bob yet')
      return e
    })
    expect(el.style.transform).toBe('translate(120px, 45px)')
    expect(el.style.transition).toBe('transform 80ms linear')
    expect(el.parentElement!.style.transform).toBe('translate(0px, 0px) scale(1)')
  })
})
