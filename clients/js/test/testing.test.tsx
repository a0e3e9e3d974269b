/**
 * herald-realtime/testing (issue 14.6): a component using useRealtime and
 * the channel hooks renders under a test runner with a mock service — no
 * socket opened, no request made — and the test drives what it sees.
 */
import { act, create, type ReactTestRenderer } from 'react-test-renderer'
import { useState } from 'react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { useRealtime, useVenueUpdates, useNotifications, usePresence, useUnreadNotifications } from '../src/react.js'
import { useRealtime as useMobileRealtime } from '../src/react-native.js'
import { createMockRealtime, MockRealtimeProvider } from '../src/testing.js'

;(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true

function VenueScreen({ venueId }: { venueId: string }) {
  const { service, isConnected, isReceiving } = useRealtime('ws://herald.invalid/ws', 'user-1')
  const [names, setNames] = useState<string[]>([])
  const [alerts, setAlerts] = useState(0)
  useVenueUpdates(service, (u: { name: string }) => setNames((n) => [...n, u.name]), venueId)
  useNotifications(service, () => setAlerts((a) => a + 1))
  return `${isConnected ? 'connected' : 'offline'}/${isReceiving ? 'receiving' : 'quiet'}: ${names.join(',')} (${alerts})`
}

let renderer: ReactTestRenderer | null = null
afterEach(() => {
  act(() => renderer?.unmount())
  renderer = null
  vi.restoreAllMocks()
})

function Room() {
  const { service } = useRealtime('ws://herald.invalid/ws', 'user-1')
  const { clients, total } = usePresence(service, 'room:1')
  return `${total}: ${clients.map((c) => c.user).join(',')}`
}

describe('herald-realtime/testing', () => {
  it('usePresence follows the joins and leaves the test makes', async () => {
    const mock = createMockRealtime({ state: 'connected' })
    mock.join('room:1', { client: 'a', user: 'ann', info: null })
    await act(async () => {
      renderer = create(
        <MockRealtimeProvider service={mock}>
          <Room />
        </MockRealtimeProvider>,
      )
    })
    expect(renderer!.toJSON()).toBe('1: ann')
    act(() => mock.join('room:1', { client: 'b', user: 'bob', info: { name: 'Bob' } }))
    expect(renderer!.toJSON()).toBe('2: ann,bob')
    act(() => mock.leave('room:1', { client: 'a', user: 'ann', info: null }))
    expect(renderer!.toJSON()).toBe('1: bob')
    expect(await mock.presenceStats('room:1')).toEqual({ clients: 1, users: 1 })
  })

  it('useRealtime returns the mock: nothing leaves the process, the test drives the screen', () => {
    const fetchSpy = vi.spyOn(globalThis, 'fetch')
    const sockets = vi.fn()
    ;(globalThis as { WebSocket?: unknown }).WebSocket = sockets
    const mock = createMockRealtime({ state: 'connected' })
    act(() => {
      renderer = create(
        <MockRealtimeProvider service={mock}>
          <VenueScreen venueId="42" />
        </MockRealtimeProvider>,
      )
    })
    expect(renderer!.toJSON()).toBe('connected/receiving:  (0)')
    expect(mock.subscribedChannels).toEqual(['venue:42'])
    act(() => mock.emit('venue:42', { name: 'Blue Bar' }))
    act(() => mock.emit('venue:7', { name: 'elsewhere' }))
    act(() => mock.notify({ title: 'hi' }))
    expect(renderer!.toJSON()).toBe('connected/receiving: Blue Bar (1)')
    act(() => mock.setState('polling', { receiving: false }))
    expect(renderer!.toJSON()).toBe('offline/quiet: Blue Bar (1)')
    act(() => renderer!.unmount())
    renderer = null
    expect(mock.subscribedChannels).toEqual([])
    expect(fetchSpy).not.toHaveBeenCalled()
    expect(sockets).not.toHaveBeenCalled()
    delete (globalThis as { WebSocket?: unknown }).WebSocket
  })

  it('the React Native useRealtime takes the mock too', () => {
    const mock = createMockRealtime({ state: 'reconnecting' })
    function Screen() {
      const { state } = useMobileRealtime('ws://herald.invalid/ws', 'https://herald.invalid', 'user-2')
      return state
    }
    act(() => {
      renderer = create(
        <MockRealtimeProvider service={mock}>
          <Screen />
        </MockRealtimeProvider>,
      )
    })
    expect(renderer!.toJSON()).toBe('reconnecting')
    act(() => mock.setState('connected'))
    expect(renderer!.toJSON()).toBe('connected')
  })

  it('useUnreadNotifications counts the notifications the test sends, and markRead() records what it read', async () => {
    const mock = createMockRealtime({ state: 'connected' })
    let markRead: (cursor?: string) => Promise<number> = () => Promise.resolve(-1)
    function Badge() {
      const { service } = useRealtime('ws://herald.invalid/ws', 'user-3')
      const unread = useUnreadNotifications(service)
      markRead = unread.markRead
      return `unread ${unread.unread}`
    }
    act(() => {
      renderer = create(
        <MockRealtimeProvider service={mock}>
          <Badge />
        </MockRealtimeProvider>,
      )
    })
    expect(renderer!.toJSON()).toBe('unread 0')
    act(() => mock.setUnread(4))
    expect(renderer!.toJSON()).toBe('unread 4')
    act(() => {
      mock.notify({ title: 'a' })
      mock.notify({ title: 'b' })
    })
    expect(renderer!.toJSON()).toBe('unread 6')
    await act(async () => {
      expect(await markRead('mock:1')).toBe(1)
    })
    expect(renderer!.toJSON()).toBe('unread 1')
    await act(async () => {
      expect(await markRead()).toBe(0)
    })
    expect(renderer!.toJSON()).toBe('unread 0')
    expect(mock.markedRead).toEqual(['mock:1', 'mock:2'])
  })
})
