/** RealtimeService's polling fallback against a real Herald process (SPEC §5, §8). */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeService } from '../src/service.js'
import type { ConnectionState, RealtimeOptions, WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { startProxy, type Proxy } from './helpers/proxy.js'
import { recordStates, waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor

let server: Herald
let proxy: Proxy
const services: RealtimeService[] = []
function service(options: Partial<RealtimeOptions>): RealtimeService {
  const s = new RealtimeService({
    url: proxy.wsUrl,
    webSocket: WS,
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    fallbackAfter: 2,
    pollInterval: 10_000,
    longPollWait: 5,
    ...options,
  })
  services.push(s)
  return s
}

beforeAll(async () => {
  server = await startHerald()
  proxy = await startProxy(server.origin)
})
afterEach(() => {
  for (const s of services.splice(0)) s.disconnect()
  proxy.blockUpgrades(false)
})
afterAll(async () => {
  await proxy?.close()
  await server?.stop()
})

describe('RealtimeService polling fallback', () => {
  it('polls channels and the inbox with long polls when the socket cannot be opened, then switches back', async () => {
    proxy.blockUpgrades(true)
    const s = service({ token: makeToken('poll-1') })
    const states = recordStates(s)
    const got: number[] = []
    const notes: string[] = []
    s.subscribe('venue:20', (d) => got.push(d as number))
    s.onNotification((d) => notes.push(d as string))
    s.connect()
    await waitFor(() => s.state === 'polling', 'polling state')
    expect(states).toEqual(['disconnected', 'connecting', 'reconnecting', 'polling'])
    // Let the first (timestamp-based) polls land, so the streams are at the head.
    await waitFor(() => proxy.requests >= 2, 'first polls')
    const t0 = Date.now()
    await server.publish('venue:20', 1)
    await server.notify('poll-1', 'n1')
    await waitFor(() => got.length === 1 && notes.length === 1, 'polled message and notification')
    // pollInterval is 10 s: arriving well before it proves the server held the poll.
    expect(Date.now() - t0).toBeLessThan(4_000)
    await server.publish('venue:20', 2)
    await waitFor(() => got.length === 2, 'second polled message')

    proxy.blockUpgrades(false)
    await waitFor(() => s.state === 'connected', 'back on the socket', 10_000)
    await server.publish('venue:20', 3)
    await server.notify('poll-1', 'n2')
    await waitFor(() => got.length === 3 && notes.length === 2, 'message over the socket')
    expect(got).toEqual([1, 2, 3])
    expect(notes).toEqual(['n1', 'n2'])
  })

  it('polls anonymously for public channels (no inbox without a token)', async () => {
    proxy.blockUpgrades(true)
    const s = service({})
    const got: unknown[] = []
    s.subscribe('pub:21', (d) => got.push(d))
    s.connect()
    await waitFor(() => s.state === 'polling', 'polling state')
    await server.publish('pub:21', { hello: 'anon' })
    await waitFor(() => got.length === 1, 'anonymous polled message')
    expect(got).toEqual([{ hello: 'anon' }])
  })

  it('delivers every message exactly once, in order, across socket → polling → socket while publishing continues', async () => {
    const s = service({ token: makeToken('poll-2') })
    const got: number[] = []
    const notes: number[] = []
    const via: ConnectionState[] = []
    s.subscribe('venue:22', (d) => {
      got.push(d as number)
      via.push(s.state)
    })
    s.onNotification((d) => notes.push(d as number))
    const live = new Promise<void>((r) => s.on('subscribed', () => r()))
    s.connect()
    await live

    const total = 150
    let published = 0
    let cutAt = 0
    let restoredAt = 0
    const publisher = (async () => {
      for (let i = 1; i <= total; i++) {
        await server.publish('venue:22', i)
        if (i % 5 === 0) await server.notify('poll-2', i / 5)
        published = i
        await new Promise((r) => setTimeout(r, 15))
      }
    })()

    await waitFor(() => published >= 30, '30 published')
    proxy.blockUpgrades(true)
    proxy.dropSockets()
    cutAt = published
    await waitFor(() => s.state === 'polling', 'fallback to polling', 10_000)
    await waitFor(() => via.includes('polling') && published >= cutAt + 40, 'messages while polling', 10_000)
    proxy.blockUpgrades(false)
    await waitFor(() => s.state === 'connected', 'switched back to the socket', 10_000)
    restoredAt = published
    await publisher
    await waitFor(() => got.length >= total && notes.length >= total / 5, 'every message', 15_000)
    // Anything late and duplicated would show up within a few more polls/frames.
    await new Promise((r) => setTimeout(r, 300))

    expect(got).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    expect(notes).toEqual(Array.from({ length: total / 5 }, (_, i) => i + 1))
    expect(via.filter((v) => v === 'polling').length).toBeGreaterThan(0)
    expect(via.lastIndexOf('connected')).toBeGreaterThan(via.indexOf('polling'))
    expect(restoredAt).toBeLessThan(total) // the switch back happened mid-stream
  })
})
