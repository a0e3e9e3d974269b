// @vitest-environment jsdom
/**
 * Read state (SPEC §11) in the SDK, against a real Herald process:
 * `unreadCount` and the `unread` event, `markNotificationsRead` over the
 * socket and over HTTP while polling, the count across a resume (replays are
 * never counted twice), `useUnreadNotifications`, and the mobile case: an app
 * back from the background shows the right count from the `connected` frame
 * before anything new arrives.
 */
import { act, cleanup, fireEvent, render, screen } from '@testing-library/react'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeClient } from '../src/client.js'
import { RealtimeService } from '../src/service.js'
import { MobileRealtimeService, type AppStateLike } from '../src/mobile.js'
import { useUnreadNotifications } from '../src/react.js'
import { useUnreadNotifications as useMobileUnreadNotifications } from '../src/react-native.js'
import type { RealtimeOptions, WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { startProxy, type Proxy } from './helpers/proxy.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor
const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, webSocket: WS } satisfies Partial<RealtimeOptions>

let server: Herald
let proxy: Proxy
const stops: Array<{ disconnect(): void }> = []
function track<C extends { disconnect(): void }>(c: C): C {
  stops.push(c)
  return c
}

/** Resolves with `unreadCount` as it is at the moment `c` next reaches `connected`. */
function unreadAtConnected(c: RealtimeClient): Promise<number> {
  return new Promise((resolve) => {
    const off = c.on('state', (s) => {
      if (s === 'connected') {
        off()
        resolve(c.unreadCount)
      }
    })
  })
}

/** The server's own count for `user` (`GET /api/notifications`). */
async function serverUnread(user: string): Promise<number> {
  const res = await fetch(`${server.origin}/api/notifications`, { headers: { authorization: `Bearer ${makeToken(user)}` } })
  expect(res.status).toBe(200)
  return ((await res.json()) as { unread: number }).unread
}

class FakeAppState implements AppStateLike {
  currentState = 'active'
  private fns = new Set<(s: string) => void>()
  addEventListener(_t: 'change', fn: (s: string) => void) {
    this.fns.add(fn)
    return { remove: () => void this.fns.delete(fn) }
  }
  set(s: string) {
    this.currentState = s
    for (const fn of this.fns) fn(s)
  }
}

beforeAll(async () => {
  server = await startHerald()
  proxy = await startProxy(server.origin)
})
afterEach(() => {
  cleanup()
  for (const c of stops.splice(0)) c.disconnect()
  proxy.blockUpgrades(false)
})
afterAll(async () => {
  await proxy?.close()
  await server?.stop()
})

describe('read state', () => {
  it('takes the count from connected, adds live notifications, and marks read over the socket', async () => {
    await server.notify('rs-1', { n: 1 })
    const second = await server.notify('rs-1', { n: 2 })
    const c = track(new RealtimeClient({ url: server.wsUrl, ...fast, token: makeToken('rs-1') }))
    expect(c.unreadCount).toBe(0)
    expect(c.notificationsCursor).toBeNull()
    const events: number[] = []
    c.on('unread', (n) => events.push(n))
    const atConnect = unreadAtConnected(c)
    c.connect()
    expect(await atConnect).toBe(2)
    expect(c.notificationsCursor).toBe(second.cursor)

    const got: string[] = []
    c.onNotification((_d, meta) => got.push(meta.cursor))
    const third = await server.notify('rs-1', { n: 3 })
    await waitFor(() => c.unreadCount === 3, 'a live notification counted')
    expect(got).toEqual([third.cursor])
    expect(c.notificationsCursor).toBe(third.cursor)

    expect(await c.markNotificationsRead(second.cursor)).toBe(1)
    expect(c.unreadCount).toBe(1)
    expect(await serverUnread('rs-1')).toBe(1)
    // Never backwards.
    const first = `${second.cursor.split(':')[0]}:1`
    expect(await c.markNotificationsRead(first)).toBe(1)
    expect(await c.markNotificationsRead(c.notificationsCursor!)).toBe(0)
    expect(await serverUnread('rs-1')).toBe(0)
    expect(events).toEqual([2, 3, 1, 0])

    // Read up to the newest, then one more arrives: counted once.
    await server.notify('rs-1', { n: 4 })
    await waitFor(() => c.unreadCount === 1, 'the next live notification')
    expect(await serverUnread('rs-1')).toBe(1)
  })

  it('rejects a malformed cursor (1000), before connecting (1010), and for an anonymous connection (1002)', async () => {
    const c = track(new RealtimeClient({ url: server.wsUrl, ...fast, token: makeToken('rs-2') }))
    await expect(c.markNotificationsRead('nope')).rejects.toMatchObject({ code: 1000 })
    await expect(c.markNotificationsRead('abc:1')).rejects.toMatchObject({ code: 1010 })
    const anon = track(new RealtimeClient({ url: server.wsUrl, ...fast }))
    const connected = unreadAtConnected(anon)
    anon.connect()
    expect(await connected).toBe(0)
    expect(anon.notificationsCursor).toBeNull()
    await expect(anon.markNotificationsRead('abc:1')).rejects.toMatchObject({ code: 1002 })
  })

  it('counts notifications replayed after a resume once: they are in the connected count', async () => {
    await server.notify('rs-3', 'a')
    const c = track(new RealtimeClient({ url: proxy.wsUrl, ...fast, token: makeToken('rs-3') }))
    const got: unknown[] = []
    c.onNotification((d) => got.push(d))
    let connected = unreadAtConnected(c)
    c.connect()
    expect(await connected).toBe(1)

    proxy.blockUpgrades(true)
    proxy.dropSockets()
    await waitFor(() => c.state !== 'connected', 'cut off')
    await server.notify('rs-3', 'b')
    await server.notify('rs-3', 'c')
    connected = unreadAtConnected(c)
    proxy.blockUpgrades(false)
    // The server counted b and c: 3 unread, before the replays arrive.
    expect(await connected).toBe(3)
    await waitFor(() => got.length === 2, 'the two missed notifications replayed')
    expect(got).toEqual(['b', 'c'])
    expect(c.unreadCount).toBe(3)

    await server.notify('rs-3', 'd')
    await waitFor(() => got.length === 3, 'a live one')
    expect(c.unreadCount).toBe(4)
    expect(await serverUnread('rs-3')).toBe(4)
  })

  it('RealtimeService takes the count from polls and marks read over HTTP while polling', async () => {
    const first = await server.notify('rs-4', 1)
    proxy.blockUpgrades(true)
    const s = track(new RealtimeService({ url: proxy.wsUrl, ...fast, fallbackAfter: 1, longPollWait: 1, token: makeToken('rs-4') }))
    s.connect()
    await waitFor(() => s.state === 'polling', 'polling')
    await waitFor(() => s.unreadCount === 1, 'the count from the first poll')
    await server.notify('rs-4', 2)
    await waitFor(() => s.unreadCount === 2, 'the count from a later poll')
    const requests = proxy.requests
    expect(await s.markNotificationsRead(first.cursor)).toBe(1)
    expect(proxy.requests).toBeGreaterThan(requests)
    expect(s.unreadCount).toBe(1)
    expect(await serverUnread('rs-4')).toBe(1)
    expect(await s.markNotificationsRead(s.notificationsCursor!)).toBe(0)
    expect(await serverUnread('rs-4')).toBe(0)

    // Back on the socket, the connected frame agrees.
    const connected = unreadAtConnected(s)
    proxy.blockUpgrades(false)
    expect(await connected).toBe(0)
  })

  it('useUnreadNotifications shows the count and markRead() reads everything', async () => {
    await server.notify('rs-5', 'x')
    await server.notify('rs-5', 'y')
    const c = track(new RealtimeClient({ url: server.wsUrl, ...fast, token: makeToken('rs-5') }))
    c.connect()
    function Badge() {
      const { unread, markRead } = useUnreadNotifications(c)
      return (
        <button data-testid="badge" onClick={() => void markRead()}>
          {unread}
        </button>
      )
    }
    render(<Badge />)
    await waitFor(() => screen.getByTestId('badge').textContent === '2', 'the count at connect')
    await server.notify('rs-5', 'z')
    await waitFor(() => screen.getByTestId('badge').textContent === '3', 'a live notification')
    await act(async () => {
      fireEvent.click(screen.getByTestId('badge'))
    })
    await waitFor(() => screen.getByTestId('badge').textContent === '0', 'all read')
    expect(await serverUnread('rs-5')).toBe(0)
  })

  it('mobile: back from the background, the count from connected is right before anything new arrives', async () => {
    const app = new FakeAppState()
    const m = track(
      new MobileRealtimeService({ url: proxy.wsUrl, ...fast, appState: app, backgroundGrace: 100, token: makeToken('rs-6') }),
    )
    const got: unknown[] = []
    m.onNotification((d) => got.push(d))
    function Badge() {
      const { unread } = useMobileUnreadNotifications(m)
      return <span data-testid="mobile-badge">{unread}</span>
    }
    render(<Badge />)
    let connected = unreadAtConnected(m)
    m.connect()
    expect(await connected).toBe(0)

    app.set('background')
    await waitFor(() => m.isSuspended && m.state === 'disconnected', 'suspended after the grace', 5_000)
    await waitFor(() => proxy.sockets === 0, 'no socket while away')
    for (let i = 1; i <= 3; i++) await server.notify('rs-6', { away: i })
    expect(screen.getByTestId('mobile-badge').textContent).toBe('0')

    connected = unreadAtConnected(m)
    app.set('active')
    // Read at the moment of `connected`, with no new publish: the server's count.
    expect(await connected).toBe(3)
    await waitFor(() => screen.getByTestId('mobile-badge').textContent === '3', 'the badge after reconnect')
    // The three missed ones are replayed to the app and not counted again.
    await waitFor(() => got.length === 3, 'the missed notifications replayed')
    expect(m.unreadCount).toBe(3)
    expect(screen.getByTestId('mobile-badge').textContent).toBe('3')
  })
})
