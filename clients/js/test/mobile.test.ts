/** MobileRealtimeService's app-state and network handling against a real Herald process. */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { MobileRealtimeService, type AppStateLike, type NetworkLike } from '../src/mobile.js'
import type { MobileRealtimeOptions } from '../src/mobile.js'
import type { WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { startProxy, type Proxy } from './helpers/proxy.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor

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
  get listeners() {
    return this.fns.size
  }
}

class FakeNetwork implements NetworkLike {
  private fns = new Set<(s: { isConnected: boolean | null }) => void>()
  addEventListener(fn: (s: { isConnected: boolean | null }) => void) {
    this.fns.add(fn)
    return () => void this.fns.delete(fn)
  }
  set(isConnected: boolean) {
    for (const fn of this.fns) fn({ isConnected })
  }
}

let server: Herald
let proxy: Proxy
const services: MobileRealtimeService[] = []
function mobile(options: Partial<MobileRealtimeOptions>): MobileRealtimeService {
  const s = new MobileRealtimeService({
    url: proxy.wsUrl,
    webSocket: WS,
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    fallbackAfter: 2,
    pollInterval: 10_000,
    longPollWait: 5,
    backgroundGrace: 300,
    ...options,
  })
  services.push(s)
  return s
}
const subscribed = (s: MobileRealtimeService) => new Promise<void>((r) => s.on('subscribed', () => r()))

beforeAll(async () => {
  server = await startHerald()
  proxy = await startProxy(server.origin)
})
afterEach(() => {
  for (const s of services.splice(0)) s.destroy()
  proxy.blockUpgrades(false)
})
afterAll(async () => {
  await proxy?.close()
  await server?.stop()
})

describe('MobileRealtimeService', () => {
  it('closes the socket after backgroundGrace, and on active reconnects at once and resumes from cursors', async () => {
    const app = new FakeAppState()
    // A long backoff proves the foreground reconnect does not wait for it.
    const s = mobile({ token: makeToken('m-1'), appState: app, minReconnectDelay: 20_000, maxReconnectDelay: 20_000 })
    const got: number[] = []
    const notes: number[] = []
    s.subscribe('venue:30', (d) => got.push(d as number))
    s.onNotification((d) => notes.push(d as number))
    let live = subscribed(s)
    s.connect()
    await live
    await server.publish('venue:30', 1)
    await waitFor(() => got.length === 1, 'first message')

    app.set('background')
    expect(s.state).toBe('connected') // still within the grace period
    await waitFor(() => s.state === 'disconnected', 'socket closed after the grace', 5_000)
    expect(s.isSuspended).toBe(true)
    await waitFor(() => proxy.sockets === 0, 'no socket at the proxy')
    for (let i = 2; i <= 4; i++) await server.publish('venue:30', i)
    await server.notify('m-1', 1)
    expect(got).toEqual([1])

    live = subscribed(s)
    const t0 = Date.now()
    app.set('active')
    await live
    expect(Date.now() - t0).toBeLessThan(2_000)
    await waitFor(() => got.length === 4 && notes.length === 1, 'missed messages after resume')
    expect(got).toEqual([1, 2, 3, 4])
    expect(notes).toEqual([1])
  })

  it('returning to the foreground within the grace keeps the socket', async () => {
    const app = new FakeAppState()
    const s = mobile({ token: makeToken('m-2'), appState: app, backgroundGrace: 1_000 })
    const live = subscribed(s)
    s.subscribe('venue:31', () => {})
    s.connect()
    await live
    const upgrades = proxy.upgrades
    app.set('background')
    app.set('active')
    await new Promise((r) => setTimeout(r, 1_300))
    expect(s.state).toBe('connected')
    expect(proxy.upgrades).toBe(upgrades)
  })

  it('stops polling in the background and resumes it in the foreground', async () => {
    const app = new FakeAppState()
    proxy.blockUpgrades(true)
    const s = mobile({ token: makeToken('m-3'), appState: app, longPollWait: 1 })
    const got: number[] = []
    s.subscribe('venue:32', (d) => got.push(d as number))
    s.connect()
    await waitFor(() => s.state === 'polling', 'polling')
    await server.publish('venue:32', 1)
    await waitFor(() => got.length === 1, 'polled message')
    app.set('background')
    await waitFor(() => s.state === 'disconnected', 'suspended', 5_000)
    // In-flight polls are aborted; nothing is requested while suspended.
    await new Promise((r) => setTimeout(r, 100))
    const requests = proxy.requests
    const upgrades = proxy.upgrades
    await new Promise((r) => setTimeout(r, 1_500))
    expect(proxy.requests).toBe(requests)
    expect(proxy.upgrades).toBe(upgrades)
    await server.publish('venue:32', 2)
    app.set('active')
    await waitFor(() => got.length === 2, 'message after resume')
    expect(got).toEqual([1, 2])
  })

  it('retries the socket as soon as the network returns, without waiting out the backoff', async () => {
    const net = new FakeNetwork()
    const s = mobile({
      token: makeToken('m-4'),
      network: net,
      minReconnectDelay: 15_000,
      maxReconnectDelay: 15_000,
      fallbackAfter: 100,
      random: () => 0.999,
    })
    const got: number[] = []
    s.subscribe('venue:33', (d) => got.push(d as number))
    let live = subscribed(s)
    s.connect()
    await live
    net.set(false)
    proxy.blockUpgrades(true)
    proxy.dropSockets()
    await waitFor(() => s.state === 'reconnecting', 'reconnecting')
    await server.publish('venue:33', 1)
    proxy.blockUpgrades(false)
    live = subscribed(s)
    const t0 = Date.now()
    net.set(true)
    await live
    expect(Date.now() - t0).toBeLessThan(2_000)
    await waitFor(() => got.length === 1, 'message missed while offline')
    expect(got).toEqual([1])
  })

  it('connecting while already in the background still closes after the grace', async () => {
    const app = new FakeAppState()
    app.currentState = 'background'
    const s = mobile({ token: makeToken('m-5'), appState: app, backgroundGrace: 300 })
    s.connect()
    await waitFor(() => s.state === 'connected', 'connected')
    await waitFor(() => s.state === 'disconnected' && s.isSuspended, 'suspended after the grace', 5_000)
    app.set('active')
    await waitFor(() => s.state === 'connected', 'connected again')
  })

  it('listens to AppState only between connect and disconnect', () => {
    const app = new FakeAppState()
    const s = mobile({ appState: app, network: new FakeNetwork() })
    expect(app.listeners).toBe(0)
    s.connect()
    s.connect()
    expect(app.listeners).toBe(1)
    s.disconnect()
    expect(app.listeners).toBe(0)
  })
})
