import { createContext, useContext, useEffect, useRef, useState, type ReactNode } from 'react'
import { ResonantClient, type ClientOptions, type Room } from '@resonant/client'

const ClientContext = createContext<ResonantClient | null>(null)
const RoomContext = createContext<Room | null>(null)

export type ResonantProviderProps =
  | { client: ResonantClient; options?: never; children?: ReactNode }
  | { options: ClientOptions; client?: never; children?: ReactNode }

/**
 * Makes a {@link ResonantClient} available to {@link RoomProvider} and the hooks.
 * Pass an existing `client`, or `options` to create one for the provider's lifetime
 * (created once; closed when the provider unmounts for good, not by StrictMode's
 * mount → unmount → mount: its rooms stay connected until their unsaved changes are stored,
 * at most `unsavedGraceMs`, then are destroyed).
 */
export function ResonantProvider(props: ResonantProviderProps) {
  const optionsRef = useRef(props.options)
  const [owned] = useState(() => (props.client ? null : new ResonantClient(optionsRef.current!)))
  const client = props.client ?? owned!
  const mounted = useRef(0)
  useEffect(() => {
    if (!owned) return
    mounted.current++
    return () => {
      mounted.current--
      // Deferred so StrictMode's immediate re-mount keeps the client. Closed, not destroyed:
      // each room stays until its unsaved changes are stored (bounded by unsavedGraceMs).
      setTimeout(() => {
        if (mounted.current === 0) void owned.close()
      }, 0)
    }
  }, [owned])
  return <ClientContext.Provider value={client}>{props.children}</ClientContext.Provider>
}

/** The client of the nearest {@link ResonantProvider}. */
export function useClient(): ResonantClient {
  const client = useContext(ClientContext)
  if (!client) throw new Error('useClient: no <ResonantProvider> above this component')
  return client
}

export interface RoomProviderProps {
  workflowId: string
  /** Rendered until the room is entered (one effect after mounting). */
  fallback?: ReactNode
  children?: ReactNode
}

/**
 * Enters the workflow's room for as long as it is mounted (StrictMode-safe: the client
 * ref-counts rooms and defers closing, so a re-mount reuses the socket). Children are
 * rendered once the room exists and read it with {@link useRoom}.
 */
export function RoomProvider({ workflowId, fallback = null, children }: RoomProviderProps) {
  const client = useClient()
  const [room, setRoom] = useState<Room | null>(null)
  useEffect(() => {
    const { room, leave } = client.enterRoom(workflowId)
    setRoom(room)
    return leave
  }, [client, workflowId])
  if (!room || room.workflowId !== workflowId) return <>{fallback}</>
  return <RoomContext.Provider value={room}>{children}</RoomContext.Provider>
}

/** The room of the nearest {@link RoomProvider}. */
export function useRoom(): Room {
  const room = useContext(RoomContext)
  if (!room) throw new Error('useRoom: no <RoomProvider> above this component')
  return room
}

/** The room of the nearest {@link RoomProvider}, or null outside one. */
export function useRoomOrNull(): Room | null {
  return useContext(RoomContext)
}
