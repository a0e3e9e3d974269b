// @vitest-environment jsdom
/** The web hooks with React Testing Library, against a real Herald process. */
import { act, cleanup, render, screen } from '@testing-library/react'
import { StrictMode, useState } from 'react'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import WebSocket from 'ws'
import { RealtimeService } from '../src/service.js'
import {
  useConnectionState,
  useNotifications,
  usePromotions,
  useRealtime,
  useVenueUpdates,
  useVibeChecks,
  type UseRealtimeOptions,
} from '../src/react.js'
import type { WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor
let server: Herald
beforeAll(async () => {
  server = await startHerald()
})
afterEach(() => {
  cleanup()
  vi.restoreAllMocks()
})
afterAll(async () => {
  await server?.stop()
})

type Handler = (data: unknown) => void
interface VenueProps {
  venueId: string
  onVenue: Handler
  onVibe?: Handler
  onPromo?: Handler
  onNote?: Handler
  options: UseRealtimeOptions
  expose: (s: RealtimeService) => void
}

/** The seed application's VenueManagement shape. */
function VenueManagement({ venueId, onVenue, onVibe, onPromo, onNote, options, expose }: VenueProps) {
  const { service, isConnected } = useRealtime(server.wsUrl, options)
  expose(service)
  useVenueUpdates(service, onVenue, venueId)
  useVibeChecks(service, venueId, (d) => onVibe?.(d))
  usePromotions(service, venueId, (d) => onPromo?.(d))
  useNotifications(service, (d) => onNote?.(d))
  const state = useConnectionState(service)
  return (
    <div>
      <div data-testid="status">Status: {isConnected ? 'Connected' : 'Disconnected'}</div>
      <div data-testid="state">{state}</div>
    </div>
  )
}

function whenSubscribed(s: RealtimeService, channels: string[]): Promise<void> {
  const left = new Set(channels.filter((c) => !live.get(s)?.has(c)))
  return new Promise((resolve) => {
    if (left.size === 0) return resolve()
    const off = s.on('subscribed', (e) => {
      left.delete(e.channel)
      if (left.size === 0) {
        off()
        resolve()
      }
    })
  })
}
const live = new WeakMap<RealtimeService, Set<string>>()
function track(s: RealtimeService): void {
  if (live.has(s)) return
  const set = new Set<string>()
  live.set(s, set)
  s.on('subscribed', (e) => set.add(e.channel))
}

describe('web hooks', () => {
  it('useRealtime connects and the channel hooks receive venue updates, vibe checks, promotions and notifications', async () => {
    let service!: RealtimeService
    const venue: unknown[] = []
    const vibes: unknown[] = []
    const promos: unknown[] = []
    const notes: unknown[] = []
    const options = { token: makeToken('hook-1'), webSocket: WS }
    render(
      <VenueManagement
        venueId="1"
        options={options}
        expose={(s) => ((service = s), track(s))}
        onVenue={(d) => venue.push(d)}
        onVibe={(d) => vibes.push(d)}
        onPromo={(d) => promos.push(d)}
        onNote={(d) => notes.push(d)}
      />,
    )
    await waitFor(() => screen.getByTestId('status').textContent === 'Status: Connected', 'connected status')
    await whenSubscribed(service, ['venue:1', 'vibe_checks:1', 'promotions:1'])
    await server.publish('venue:1', { name: 'Club' })
    await server.publish('vibe_checks:1', { vibe: 5 })
    await server.publish('promotions:1', { promo: '2x1' })
    await server.notify('hook-1', { title: 'Venue Updated' })
    await waitFor(() => venue.length && vibes.length && promos.length && notes.length, 'all four hooks')
    expect([venue, vibes, promos, notes]).toEqual([[{ name: 'Club' }], [{ vibe: 5 }], [{ promo: '2x1' }], [{ title: 'Venue Updated' }]])
    expect(screen.getByTestId('state').textContent).toBe('connected')
  })

  it('does not resubscribe on re-render or on a new callback identity, and calls the newest callback', async () => {
    const spy = vi.spyOn(RealtimeService.prototype, 'subscribe')
    let service!: RealtimeService
    const options = { token: makeToken('hook-2'), webSocket: WS }
    const calls: string[] = []
    const view = (tag: string) => (
      <VenueManagement
        venueId="2"
        options={{ ...options }}
        expose={(s) => ((service = s), track(s))}
        onVenue={(d) => calls.push(`${tag}:${String(d)}`)}
      />
    )
    const { rerender } = render(view('first'))
    await waitFor(() => service?.state === 'connected', 'connected')
    await whenSubscribed(service, ['venue:2'])
    const subscribes = spy.mock.calls.length
    const first = service
    rerender(view('second'))
    rerender(view('third'))
    expect(spy.mock.calls.length).toBe(subscribes)
    expect(service).toBe(first) // an equal options object keeps the same service
    await server.publish('venue:2', 'x')
    await waitFor(() => calls.length === 1, 'message')
    expect(calls).toEqual(['third:x'])
  })

  it('switches channel when venueId changes, and unsubscribes everything on unmount', async () => {
    let service!: RealtimeService
    const got: string[] = []
    const options = { token: makeToken('hook-3'), webSocket: WS }
    function Switcher() {
      const [venueId, setVenueId] = useState('3')
      return (
        <>
          <button onClick={() => setVenueId('4')}>switch</button>
          <VenueManagement venueId={venueId} options={options} expose={(s) => ((service = s), track(s))} onVenue={(d) => got.push(String(d))} />
        </>
      )
    }
    const { unmount } = render(
      <StrictMode>
        <Switcher />
      </StrictMode>,
    )
    await waitFor(() => service?.state === 'connected', 'connected')
    await whenSubscribed(service, ['venue:3'])
    expect(service.subscribedChannels).toContain('venue:3')
    const unsubscribed = new Promise<void>((r) => setTimeout(r, 0))
    await act(async () => {
      screen.getByText('switch').click()
      await unsubscribed
    })
    expect(service.subscribedChannels).not.toContain('venue:3')
    expect(service.subscribedChannels).toContain('venue:4')
    await whenSubscribed(service, ['venue:4'])
    await server.publish('venue:3', 'old')
    await server.publish('venue:4', 'new')
    await waitFor(() => got.length >= 1, 'message on the new venue')
    expect(got).toEqual(['new'])

    unmount()
    expect(service.subscribedChannels).toEqual([])
    expect(service.state).toBe('disconnected')
  })
})

describe('seed signature against a dev-mode server', () => {
  it("useRealtime(url, 'user-123') connects as the dev-mode user and receives that user's notifications", async () => {
    const dev = await startHerald({ dev: true })
    try {
      let service!: RealtimeService
      const notes: unknown[] = []
      // The seed passes a bare user id; `webSocket` comes from the global here.
      const g = globalThis as { WebSocket?: unknown }
      const saved = g.WebSocket
      g.WebSocket = WebSocket
      function Inbox() {
        const { service: s, isConnected } = useRealtime(dev.wsUrl, 'user-123')
        service = s
        useNotifications(s, (n) => notes.push(n))
        return <div data-testid="dev-status">{isConnected ? 'Connected' : 'Disconnected'}</div>
      }
      try {
        render(<Inbox />)
        await waitFor(() => screen.getByTestId('dev-status').textContent === 'Connected', 'connected')
        await dev.notify('user-123', { title: 'Venue Updated', message: 'Club has been updated' })
        await dev.notify('user-456', { title: 'not mine' })
        await waitFor(() => notes.length === 1, 'notification')
        expect(notes).toEqual([{ title: 'Venue Updated', message: 'Club has been updated' }])
        expect(service.state).toBe('connected')
      } finally {
        g.WebSocket = saved
      }
    } finally {
      cleanup()
      await dev.stop()
    }
  })
})
