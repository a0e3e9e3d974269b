/** RealtimeClient against a real Herald process (SPEC §3, §8). */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import WebSocket from 'ws'
import { RealtimeClient } from '../src/client.js'
import type { MessageMeta, RealtimeOptions, WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { startProxy, type Proxy } from './helpers/proxy.js'
import { recordStates, waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor
const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, webSocket: WS } satisfies Partial<RealtimeOptions>

let server: Herald
const clients: RealtimeClient[] = []
function client(options: Omit<RealtimeOptions, 'url'> & { url?: string }): RealtimeClient {
  const c = new RealtimeClient({ url: server.wsUrl, ...fast, ...options })
  clients.push(c)
  return c
}
function subscribed(c: RealtimeClient, channel: string): Promise<void> {
  return new Promise((resolve) => {
    const off = c.on('subscribed', (s) => {
      if (s.channel === channel) {
        off()
        resolve()
      }
    })
  })
}

beforeAll(async () => {
  server = await startHerald()
})
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect()
})
afterAll(async () => {
  await server?.stop()
})

describe('RealtimeClient', () => {
  it('disconnecting while the socket is still connecting raises no uncaught error', async () => {
    // A listener that accepts TCP and never answers the upgrade: the socket
    // stays CONNECTING. Node's `ws` emits 'error' when such a socket is
    // closed; without a listener that is an uncaught exception, which vitest
    // reports as a failed run.
    const held: Socket[] = []
    const silent = createServer((sock) => held.push(sock))
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    const { port } = silent.address() as AddressInfo
    try {
      const c = client({ url: `ws://127.0.0.1:${port}/ws`, token: makeToken('user-c') })
      c.connect()
      await waitFor(() => held.length === 1, 'the TCP connection')
      expect(c.state).toBe('connecting')
      c.disconnect()
      expect(c.state).toBe('disconnected')
      // Let ws deliver its deferred 'error' (next tick) while the test still runs.
      await new Promise((r) => setTimeout(r, 50))
    } finally {
      for (const sock of held) sock.destroy()
      await new Promise((r) => silent.close(r))
    }
  })

  it('connects with a token, reports states, and delivers messages in order with their metadata', async () => {
    const c = client({ token: makeToken('user-1') })
    const states = recordStates(c)
    const got: Array<[unknown, MessageMeta]> = []
    c.subscribe('venue:1', (data, meta) => got.push([data, meta]))
    const live = subscribed(c, 'venue:1')
    c.connect()
    await live
    expect(states).toEqual(['disconnected', 'connecting', 'connected'])
    const a = await server.publish('venue:1', { n: 1 })
    await server.publish('venue:1', { n: 2 })
    await waitFor(() => got.length === 2, 'two messages')
    expect(got.map(([d]) => d)).toEqual([{ n: 1 }, { n: 2 }])
    expect(got[0]![1]).toMatchObject({ channel: 'venue:1', offset: a.offset, cursor: a.cursor })
    expect(got[1]![1].offset).toBe(a.offset + 1)
    expect(Math.abs(got[0]![1].ts - Date.now())).toBeLessThan(10_000)
  })

  it('stops delivering after unsubscribe, and keeps other handlers of the channel', async () => {
    const c = client({ token: makeToken('user-2') })
    const first: number[] = []
    const second: number[] = []
    const off1 = c.subscribe('venue:2', (_d, m) => first.push(m.offset))
    c.subscribe('venue:2', (_d, m) => second.push(m.offset))
    const marker: number[] = []
    c.subscribe('venue:2b', (_d, m) => marker.push(m.offset))
    const live = Promise.all([subscribed(c, 'venue:2'), subscribed(c, 'venue:2b')])
    c.connect()
    await live
    await server.publish('venue:2', 1)
    await waitFor(() => first.length === 1 && second.length === 1, 'first message')
    off1()
    await server.publish('venue:2', 2)
    await server.publish('venue:2b', 'marker')
    await waitFor(() => marker.length === 1 && second.length === 2, 'marker')
    expect(first).toHaveLength(1)
    expect(c.subscribedChannels).toEqual(['venue:2', 'venue:2b'])
  })

  it('receives notifications for its user, and publishes where client_publish is on', async () => {
    const c = client({ token: makeToken('user-3') })
    const notes: unknown[] = []
    c.onNotification((d) => notes.push(d))
    const chat: unknown[] = []
    c.subscribe('chat:1', (d) => chat.push(d))
    const live = subscribed(c, 'chat:1')
    c.connect()
    await live
    await server.notify('user-3', { title: 'hi' })
    await server.notify('someone-else', { title: 'not for you' })
    await waitFor(() => notes.length === 1, 'notification')
    expect(notes).toEqual([{ title: 'hi' }])
    const r = await c.publish('chat:1', { text: 'from client' })
    expect(r.offset).toBeGreaterThan(0)
    await waitFor(() => chat.length === 1, 'own publish echoed')
    expect(chat).toEqual([{ text: 'from client' }])
  })

  it('reports a permission error for a channel an anonymous client may not read', async () => {
    const c = client({})
    const errors: Array<{ code: number; channel?: string }> = []
    c.on('error', (e) => errors.push(e))
    c.subscribe('venue:3', () => {})
    c.connect()
    await waitFor(() => errors.length > 0, 'subscribe error')
    expect(errors[0]).toMatchObject({ code: 1002, channel: 'venue:3' })
    expect(c.state).toBe('connected')
    expect(c.getConnectionState()).toBe('connected')
  })

  it('calls getToken again before exp and stays connected across refreshes', async () => {
    let calls = 0
    const frames: string[] = []
    class RecordingSocket extends WebSocket {
      constructor(url: string) {
        super(url)
        this.on('message', (d) => frames.push(String(d)))
      }
    }
    const c = client({
      webSocket: RecordingSocket as unknown as WebSocketConstructor,
      getToken: async () => {
        calls++
        return makeToken('user-4', 3)
      },
    })
    const states = recordStates(c)
    const got: number[] = []
    c.subscribe('venue:4', (_d, m) => got.push(m.offset))
    const live = subscribed(c, 'venue:4')
    c.connect()
    await live
    // Each token lives under 3 s and the server allows no leeway: without
    // refreshes the server would close the socket (1009, then 4005).
    await waitFor(() => calls >= 4, 'three refreshes', 15_000)
    await server.publish('venue:4', 'still here')
    await waitFor(() => got.length === 1, 'message after refreshes')
    expect(states).toEqual(['disconnected', 'connecting', 'connected'])
    // Refreshed before exp: the server never had to say the token expired.
    expect(frames.filter((f) => f.includes('"refreshed"')).length).toBeGreaterThanOrEqual(3)
    expect(frames.filter((f) => f.includes('"code":1009'))).toEqual([])
  })

  it('does not reconnect when the server says reconnect:false (bad token)', async () => {
    const proxy = await startProxy(server.origin)
    try {
      const c = client({ url: proxy.wsUrl, token: makeToken('user-5', 3600, {}, 'wrong-secret-wrong-secret') })
      const errors: Array<{ code: number }> = []
      c.on('error', (e) => errors.push(e))
      c.connect()
      await waitFor(() => c.state === 'disconnected', 'disconnected')
      expect(errors.map((e) => e.code)).toContain(4001)
      // Give a reconnect (20-200 ms backoff) ample time to happen if it were going to.
      await new Promise((r) => setTimeout(r, 600))
      expect(proxy.upgrades).toBe(1)
      expect(c.state).toBe('disconnected')
    } finally {
      await proxy.close()
    }
  })
})

describe('RealtimeClient recovery', () => {
  let proxy: Proxy
  beforeAll(async () => {
    proxy = await startProxy(server.origin)
  })
  afterAll(async () => {
    await proxy.close()
  })

  it('resubscribes with each cursor after drops: every message once, in order, while publishing continues', async () => {
    const c = client({ url: proxy.wsUrl, token: makeToken('user-6') })
    const got: number[] = []
    const notes: number[] = []
    c.subscribe('venue:6', (d) => got.push(d as number))
    c.onNotification((d) => notes.push(d as number))
    const live = subscribed(c, 'venue:6')
    c.connect()
    await live
    const total = 80
    for (let i = 1; i <= total; i++) {
      await server.publish('venue:6', i)
      if (i % 4 === 0) await server.notify('user-6', i / 4)
      if (i === 20 || i === 45) proxy.dropSockets()
      await new Promise((r) => setTimeout(r, 5))
    }
    await waitFor(() => got.length >= total && notes.length >= total / 4, 'all messages', 15_000)
    await new Promise((r) => setTimeout(r, 200))
    expect(got).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    expect(notes).toEqual(Array.from({ length: total / 4 }, (_, i) => i + 1))
    expect(proxy.upgrades).toBeGreaterThanOrEqual(3)
  })

  it('treats two missed pings as a dead socket and resumes on a new one', async () => {
    const c = client({ url: proxy.wsUrl, token: makeToken('user-7') })
    const states = recordStates(c)
    const got: number[] = []
    c.subscribe('venue:7', (d) => got.push(d as number))
    const live = subscribed(c, 'venue:7')
    c.connect()
    await live
    await server.publish('venue:7', 1)
    await waitFor(() => got.length === 1, 'first message')
    const before = proxy.upgrades
    proxy.freezeSockets()
    for (let i = 2; i <= 4; i++) await server.publish('venue:7', i)
    // ping_interval is 1 s: two missed pings (+ slack) is ~2.5 s.
    await waitFor(() => got.length === 4, 'messages after the dead socket', 10_000)
    expect(got).toEqual([1, 2, 3, 4])
    expect(states).toContain('reconnecting')
    expect(proxy.upgrades).toBeGreaterThan(before)
  })
})

describe('RealtimeClient across server restarts', () => {
  it('reconnects after a shutdown (disconnect 4000, reconnect:true) and surfaces recovered:false as a gap', async () => {
    const a = await startHerald()
    const proxy = await startProxy(a.origin)
    let b: Herald | null = null
    try {
      const c = client({ url: proxy.wsUrl, token: makeToken('user-8') })
      const states = recordStates(c)
      const gaps: Array<{ channel: string | null }> = []
      c.onGap((g) => gaps.push(g))
      const got: unknown[] = []
      c.subscribe('venue:8', (d) => got.push(d))
      const live = subscribed(c, 'venue:8')
      c.connect()
      await live
      await a.publish('venue:8', 'before')
      await waitFor(() => got.length === 1, 'first message')
      proxy.blockUpgrades(true)
      await a.stop()
      await waitFor(() => c.state === 'reconnecting', 'reconnecting after shutdown')
      b = await startHerald() // memory engine: a new epoch, the history is gone
      proxy.setTarget(b.origin)
      const again = subscribed(c, 'venue:8')
      proxy.blockUpgrades(false)
      await again
      // The channel's history is gone (and so is the inbox's: channel null).
      expect(gaps).toContainEqual(expect.objectContaining({ channel: 'venue:8', since: expect.stringMatching(/:1$/) }))
      expect(gaps.filter((g) => g.channel === 'venue:8')).toHaveLength(1)
      await b.publish('venue:8', 'after')
      await waitFor(() => got.length === 2, 'message on the new server')
      expect(got).toEqual(['before', 'after'])
      expect(states.slice(1)).not.toContain('disconnected')
    } finally {
      await proxy.close()
      await a.stop()
      await b?.stop()
    }
  })

  it('recovers exactly the missed messages across a restart of a durable server', async () => {
    const { mkdtempSync } = await import('node:fs')
    const { tmpdir } = await import('node:os')
    const { join } = await import('node:path')
    const dir = mkdtempSync(join(tmpdir(), 'herald-js-durable-'))
    const engine = `kind = "embedded"\npath = "${join(dir, 'data')}"`
    const a = await startHerald({ dir, engine })
    const proxy = await startProxy(a.origin)
    let b: Herald | null = null
    try {
      const c = client({ url: proxy.wsUrl, token: makeToken('user-9') })
      const gaps: unknown[] = []
      c.onGap((g) => gaps.push(g))
      const got: number[] = []
      c.subscribe('venue:9', (d) => got.push(d as number))
      const live = subscribed(c, 'venue:9')
      c.connect()
      await live
      await a.publish('venue:9', 1)
      await waitFor(() => got.length === 1, 'first message')
      proxy.blockUpgrades(true)
      await a.stop()
      b = await startHerald({ dir, engine })
      proxy.setTarget(b.origin)
      for (let i = 2; i <= 5; i++) await b.publish('venue:9', i)
      proxy.blockUpgrades(false)
      await waitFor(() => got.length === 5, 'missed messages', 10_000)
      await b.publish('venue:9', 6)
      await waitFor(() => got.length === 6, 'live message')
      expect(got).toEqual([1, 2, 3, 4, 5, 6])
      expect(gaps).toEqual([])
    } finally {
      await proxy.close()
      await a.stop()
      await b?.stop()
    }
  })
})
