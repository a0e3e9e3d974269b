/**
 * herald-realtime/server against the real binary (issue 9.2, 9.3): the seed's
 * backend calls, typed errors, tokens the server accepts, and retries that
 * never store a message twice.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeClient } from '../src/client.js'
import { getRealtimeServer, HeraldError, type RealtimeServer } from '../src/server.js'
import type { WebSocketConstructor } from '../src/types.js'
import { API_KEY, SECRET, startHerald, type Herald } from './helpers/herald.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor

let herald: Herald
let server: RealtimeServer
const clients: RealtimeClient[] = []

beforeAll(async () => {
  herald = await startHerald({
    extra: `
[[namespaces]]
name = "staff"
subscribe = "claim"
`,
  })
  server = getRealtimeServer({ url: herald.origin, apiKey: API_KEY, hmacSecret: SECRET })
})

afterAll(async () => {
  for (const c of clients) c.disconnect()
  await herald.stop()
})

function client(token?: string): RealtimeClient {
  const c = new RealtimeClient({ url: herald.wsUrl, webSocket: WS, ...(token ? { token } : {}) })
  clients.push(c)
  c.connect()
  return c
}

/** The channel's whole history, read through the polling API. */
async function history(channel: string): Promise<{ offset: number; data: unknown }[]> {
  const res = await fetch(`${herald.origin}/api/channels/${channel}/messages`)
  const body = (await res.json()) as { messages: { offset: number; data: unknown }[] }
  return body.messages
}

/** A fetch that counts its calls and can replace an attempt's outcome. */
function scriptedFetch(script: ((url: string, init?: RequestInit) => Promise<Response>)[]) {
  const calls: { url: string; key: string | null }[] = []
  const f = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input)
    const headers = new Headers(init?.headers)
    calls.push({ url, key: headers.get('idempotency-key') })
    const step = script[calls.length - 1]
    return step ? step(url, init) : fetch(url, init)
  }) as typeof fetch
  return { f, calls }
}

describe('herald-realtime/server', () => {
  it('broadcastToChannel publishes and a subscriber receives it', async () => {
    const c = client()
    const seen: unknown[] = []
    let live = false
    c.on('subscribed', () => (live = true))
    c.subscribe('chat:venue-1', (data) => seen.push(data))
    await waitFor(() => live, 'the subscription')
    const r = await server.broadcastToChannel('chat:venue-1', { venueId: 1, name: 'Blue Bar' })
    expect(r.offset).toBe(1)
    expect(r.cursor).toMatch(/^[A-Za-z0-9]+:1$/)
    await waitFor(() => seen.length === 1, 'the message')
    expect(seen[0]).toEqual({ venueId: 1, name: 'Blue Bar' })
  })

  it('sendNotification reaches the user, with a token from createToken', async () => {
    const token = await server.createToken('user-42', { ttl: 600 })
    const c = client(token)
    const got: unknown[] = []
    c.onNotification((data) => got.push(data))
    await waitFor(() => c.state === 'connected', 'connected')
    const r = await server.sendNotification('user-42', { title: 'Happy hour' })
    expect(r.offset).toBeGreaterThan(0)
    await waitFor(() => got.length === 1, 'the notification')
    expect(got[0]).toEqual({ title: 'Happy hour' })
  })

  it('createToken carries channels, role and ttl as claims the server honours', async () => {
    const token = await server.createToken('staff-1', { channels: ['staff:*'], ttl: 120 })
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>
    expect(claims.sub).toBe('staff-1')
    expect(claims.channels).toEqual(['staff:*'])
    expect(Number(claims.exp) - Number(claims.iat)).toBe(120)
    const allowed = await fetch(`${herald.origin}/api/channels/staff:42/messages`, {
      headers: { authorization: `Bearer ${token}` },
    })
    expect(allowed.status).toBe(200)
    const other = await server.createToken('guest', {})
    const denied = await fetch(`${herald.origin}/api/channels/staff:42/messages`, {
      headers: { authorization: `Bearer ${other}` },
    })
    expect(denied.status).toBe(403)
    await expect(getRealtimeServer({ url: herald.origin, apiKey: API_KEY }).createToken('u')).rejects.toThrow(
      /hmacSecret/,
    )
  })

  it('getStats answers the status object', async () => {
    const c = client()
    await waitFor(() => c.state === 'connected', 'connected')
    const stats = await server.getStats()
    expect(stats.engine).toBe('memory')
    expect(stats.connections).toBeGreaterThanOrEqual(1)
    expect(typeof stats.uptime_s).toBe('number')
  })

  it('batch answers one result per item, refusals in place', async () => {
    const results = await server.batch([
      { action: 'broadcast', channel: 'chat:batch', data: { n: 1 } },
      { action: 'notify', userId: 'user-7', data: { n: 2 } },
      { action: 'broadcast', channel: 'bad channel!', data: { n: 3 } },
      { action: 'broadcast', channel: 'chat:batch', data: { n: 4 } },
    ])
    expect(results).toHaveLength(4)
    expect(results[0]).toMatchObject({ ok: true, channel: 'chat:batch', offset: 1 })
    expect(results[1]).toMatchObject({ ok: true, userId: 'user-7', offset: 1 })
    expect(results[2]).toMatchObject({ ok: false, error: { code: 1003 } })
    expect(results[3]).toMatchObject({ ok: true, offset: 2 })
  })

  it('failures reject with HeraldError carrying status and code, without retrying a 4xx', async () => {
    const { f, calls } = scriptedFetch([])
    const wrongKey = getRealtimeServer({ url: herald.origin, apiKey: 'nope', fetch: f })
    const err = await wrongKey.broadcastToChannel('chat:x', {}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(HeraldError)
    expect((err as HeraldError).status).toBe(401)
    expect((err as HeraldError).code).toBe(1001)
    expect(calls).toHaveLength(1)
    const bad = await server.broadcastToChannel('no spaces allowed', {}).catch((e: unknown) => e)
    expect((bad as HeraldError).status).toBe(400)
    expect((bad as HeraldError).code).toBe(1003)
  })

  it('a retry after a lost answer stores the message once', async () => {
    // The first attempt reaches the server and commits, but its answer is lost.
    const { f, calls } = scriptedFetch([
      async (url, init) => {
        await fetch(url, init)
        throw new TypeError('fetch failed: socket hang up')
      },
    ])
    const flaky = getRealtimeServer({ url: herald.wsUrl, apiKey: API_KEY, fetch: f, retries: 2 })
    const r = await flaky.broadcastToChannel('chat:once', { n: 1 })
    expect(calls).toHaveLength(2)
    expect(calls[0]!.key).toBeTruthy()
    expect(calls[1]!.key).toBe(calls[0]!.key)
    expect(r.offset).toBe(1)
    expect(await history('chat:once')).toHaveLength(1)
    // A new call is a new message.
    expect((await flaky.broadcastToChannel('chat:once', { n: 2 })).offset).toBe(2)
  })

  it('503 and 408 answers are retried with the same key; a batch keeps its item keys', async () => {
    const unavailable = () =>
      Promise.resolve(
        new Response(JSON.stringify({ error: { code: 1011, message: 'engine unavailable' } }), {
          status: 503,
          headers: { 'content-type': 'application/json' },
        }),
      )
    const { f, calls } = scriptedFetch([unavailable, () => Promise.resolve(new Response('', { status: 408 }))])
    const s = getRealtimeServer({ url: herald.origin, apiKey: API_KEY, fetch: f })
    const r = await s.sendNotification('user-9', { hi: true })
    expect(r.offset).toBe(1)
    expect(new Set(calls.map((c) => c.key)).size).toBe(1)

    const batchCalls = scriptedFetch([
      async (url, init) => {
        await fetch(url, init)
        throw new TypeError('fetch failed')
      },
    ])
    const b = getRealtimeServer({ url: herald.origin, apiKey: API_KEY, fetch: batchCalls.f })
    const results = await b.batch([
      { action: 'broadcast', channel: 'chat:batch-once', data: 1 },
      { action: 'broadcast', channel: 'chat:batch-once', data: 2, idempotencyKey: 'order-2' },
    ])
    expect(results.map((x) => (x.ok ? x.offset : -1))).toEqual([1, 2])
    expect(await history('chat:batch-once')).toHaveLength(2)
  })

  it("the seed's own code runs with only the import changed: no arguments, and no await", async () => {
    const saved = { url: process.env.HERALD_URL, key: process.env.HERALD_API_KEY }
    process.env.HERALD_URL = herald.origin
    process.env.HERALD_API_KEY = API_KEY
    const unhandled: unknown[] = []
    const onUnhandled = (e: unknown) => unhandled.push(e)
    process.on('unhandledRejection', onUnhandled)
    try {
      // As in the seed: getRealtimeServer() and calls that are not awaited.
      const seedServer = getRealtimeServer()
      seedServer.broadcastToChannel('chat:seed', { id: 1, name: 'Blue Bar' })
      seedServer.sendNotification('user-seed', { title: 'Venue Updated' })
      await waitFor(async () => (await history('chat:seed')).length === 1, 'the unawaited broadcast')
      // A failing unawaited call must not become an unhandled rejection.
      const broken = getRealtimeServer({ url: herald.origin, apiKey: 'wrong', retries: 0 })
      broken.broadcastToChannel('chat:seed', {})
      await new Promise((r) => setTimeout(r, 200))
      expect(unhandled).toEqual([])
      // …while an awaited one still rejects.
      await expect(broken.broadcastToChannel('chat:seed', {})).rejects.toMatchObject({ status: 401 })
      expect(() => getRealtimeServer({ url: herald.origin, apiKey: '' })).toThrow(/API key/)
    } finally {
      process.off('unhandledRejection', onUnhandled)
      if (saved.url === undefined) delete process.env.HERALD_URL
      else process.env.HERALD_URL = saved.url
      if (saved.key === undefined) delete process.env.HERALD_API_KEY
      else process.env.HERALD_API_KEY = saved.key
    }
  })

  it('an unreachable server rejects with status 0 after its retries', async () => {
    const { f, calls } = scriptedFetch([])
    const gone = getRealtimeServer({ url: 'http://127.0.0.1:9', apiKey: API_KEY, fetch: f, retries: 1, timeout: 2000 })
    const err = await gone.getStats().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(HeraldError)
    expect((err as HeraldError).status).toBe(0)
    expect(calls).toHaveLength(2)
  })
})
