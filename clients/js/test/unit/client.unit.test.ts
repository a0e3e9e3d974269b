import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { RealtimeClient, defaultApiUrl } from '../../src/client.js'
import { RealtimeService } from '../../src/service.js'
import { backoffDelay } from '../../src/backoff.js'
import { Position, parseCursor } from '../../src/cursor.js'
import { refreshDelay, tokenExpiry } from '../../src/token.js'
import { makeToken } from '../helpers/herald.js'
import { FakeSocket } from '../helpers/fake-socket.js'
import type { WebSocketConstructor } from '../../src/types.js'

const WS = FakeSocket as unknown as WebSocketConstructor

/** Lets the client's pending promise callbacks (token resolution) run. */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve()
}

describe('backoff', () => {
  it('stays within [0, min(max, min*2^n)] and uses the whole window', () => {
    expect(backoffDelay(0, 500, 20_000, () => 0.999)).toBe(499)
    expect(backoffDelay(3, 500, 20_000, () => 0.999)).toBe(3996)
    expect(backoffDelay(10, 500, 20_000, () => 0.999)).toBe(19_980)
    expect(backoffDelay(10, 500, 20_000, () => 0)).toBe(0)
    const seen = new Set<number>()
    for (let i = 0; i < 200; i++) seen.add(Math.floor(backoffDelay(4, 500, 20_000) / 1000))
    expect(seen.size).toBeGreaterThan(4) // jitter, not a fixed delay
  })
})

describe('cursor and position', () => {
  it('parses opaque epochs containing colons', () => {
    expect(parseCursor('a:b:17')).toEqual({ epoch: 'a:b', offset: 17 })
    expect(parseCursor('nope')).toBeNull()
    expect(parseCursor('e:-1')).toBeNull()
  })
  it('accepts each offset once, in order, and a new epoch', () => {
    const p = new Position()
    p.resetFromHead('e:20', 3)
    expect(p.cursor).toBe('e:17')
    expect(p.accept('e:17')).toBe(false)
    expect(p.accept('e:18')).toBe(true)
    expect(p.accept('e:18')).toBe(false)
    expect(p.accept('f:1')).toBe(true)
    p.advanceTo('f:0')
    expect(p.cursor).toBe('f:1')
  })
})

describe('defaultApiUrl', () => {
  it('maps the socket URL to the HTTP origin', () => {
    expect(defaultApiUrl('ws://localhost:8080/ws')).toBe('http://localhost:8080')
    expect(defaultApiUrl('wss://rt.example.com/ws?x=1')).toBe('https://rt.example.com')
    expect(defaultApiUrl('ws://[::1]:9/ws')).toBe('http://[::1]:9')
    expect(() => defaultApiUrl('localhost:8080')).toThrow(/ws:\/\//)
  })
})

describe('token', () => {
  it('reads exp and refreshes a fifth of the life before it', () => {
    const t = makeToken('u', 100)
    const exp = tokenExpiry(t)!
    expect(Math.abs(exp - (Date.now() + 100_000))).toBeLessThan(2000)
    expect(refreshDelay(exp, exp - 100_000)).toBe(80_000)
    expect(refreshDelay(exp, exp - 2_000)).toBe(1_000)
    expect(tokenExpiry('not-a-jwt')).toBeNull()
  })
})

describe('RealtimeClient state machine (fake socket)', () => {
  beforeEach(() => {
    FakeSocket.reset()
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('resubscribes with the last cursor and delivers the missed messages once, in order', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 10 })
    const got: number[] = []
    c.subscribe('venue:1', (_d, m) => got.push(m.offset))
    c.connect()
    await flush()
    const s1 = FakeSocket.last()
    s1.accept()
    const sub = s1.ofType('subscribe')[0]!
    expect(sub.since).toBeUndefined()
    s1.push({ type: 'subscribed', id: sub.id, channel: 'venue:1', cursor: 'e:5', recovered: true, missed: 0 })
    s1.push({ type: 'message', channel: 'venue:1', offset: 6, cursor: 'e:6', ts: 1, data: {} })
    s1.push({ type: 'message', channel: 'venue:1', offset: 6, cursor: 'e:6', ts: 1, data: {} })
    s1.serverClose(1006)
    expect(c.state).toBe('reconnecting')
    await vi.advanceTimersByTimeAsync(20)
    const s2 = FakeSocket.last()
    expect(s2).not.toBe(s1)
    s2.accept()
    const sub2 = s2.ofType('subscribe')[0]!
    expect(sub2.since).toBe('e:6')
    s2.push({ type: 'subscribed', id: sub2.id, channel: 'venue:1', cursor: 'e:8', recovered: true, missed: 2 })
    s2.push({ type: 'message', channel: 'venue:1', offset: 7, cursor: 'e:7', ts: 1, data: {} })
    s2.push({ type: 'message', channel: 'venue:1', offset: 8, cursor: 'e:8', ts: 1, data: {} })
    expect(got).toEqual([6, 7, 8])
    c.disconnect()
  })

  it('sends connectData, and resumes the inbox of a user the connect proxy named (no token)', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 10, connectData: { app: 'ios' } })
    c.connect()
    await flush()
    const s1 = FakeSocket.last()
    s1.accept({ user: 'u1', notifications: { cursor: 'n:4', recovered: true, missed: 0, unread: 2 } })
    expect(s1.ofType('connect')[0]).toEqual({ type: 'connect', id: expect.any(Number), data: { app: 'ios' } })
    expect(c.unreadCount).toBe(2)
    s1.serverClose(1006)
    await vi.advanceTimersByTimeAsync(20)
    const s2 = FakeSocket.last()
    s2.open()
    expect(s2.ofType('connect')[0]).toMatchObject({ data: { app: 'ios' }, notifications_since: 'n:4' })
    c.disconnect()
  })

  it('counts unread without counting twice: replays, acks, and a notification racing an ack', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, token: makeToken('u') })
    const counts: number[] = []
    c.on('unread', (n) => counts.push(n))
    c.connect()
    await flush()
    const s = FakeSocket.last()
    // Resumed with 2 missed: the server counted them (3 unread up to n:10).
    s.accept({ user: 'u', notifications: { cursor: 'n:10', recovered: true, missed: 2, unread: 3 } })
    s.push({ type: 'notification', offset: 9, cursor: 'n:9', ts: 1, data: {} })
    s.push({ type: 'notification', offset: 10, cursor: 'n:10', ts: 1, data: {} })
    expect(c.unreadCount).toBe(3)
    s.push({ type: 'notification', offset: 11, cursor: 'n:11', ts: 1, data: {} })
    expect(c.unreadCount).toBe(4)
    // Read up to n:11; the server's head had moved on to n:12 (in flight): 1 unread.
    const read = c.markNotificationsRead('n:11')
    const ack = s.ofType('ack')[0]!
    expect(ack).toMatchObject({ cursor: 'n:11' })
    s.push({ type: 'acked', id: ack.id, unread: 1 })
    expect(await read).toBe(1)
    // n:12 arrives after the answer that already counted it: not counted again.
    s.push({ type: 'notification', offset: 12, cursor: 'n:12', ts: 1, data: {} })
    expect(c.unreadCount).toBe(1)
    s.push({ type: 'notification', offset: 13, cursor: 'n:13', ts: 1, data: {} })
    expect(c.unreadCount).toBe(2)
    expect(c.notificationsCursor).toBe('n:13')
    expect(counts).toEqual([3, 4, 1, 2])
    c.disconnect()
  })

  it('logs state changes, reconnects, resumes and the fallback with debug, and nothing without it', async () => {
    const lines: string[] = []
    const c = new RealtimeService({
      url: 'ws://x/ws',
      webSocket: WS,
      minReconnectDelay: 10,
      maxReconnectDelay: 10,
      fallbackAfter: 2,
      fetch: () => new Promise(() => {}),
      debug: (m) => lines.push(m),
    })
    c.subscribe('venue:1', () => {})
    c.connect()
    await flush()
    let s = FakeSocket.last()
    s.accept()
    s.push({ type: 'subscribed', id: s.ofType('subscribe')[0]!.id, channel: 'venue:1', cursor: 'e:5', recovered: true, missed: 0 })
    s.serverClose(1006)
    await vi.advanceTimersByTimeAsync(20)
    s = FakeSocket.last()
    s.accept()
    s.push({ type: 'subscribed', id: s.ofType('subscribe')[0]!.id, channel: 'venue:1', cursor: 'e:7', recovered: true, missed: 2 })
    s.serverClose(1006)
    await vi.advanceTimersByTimeAsync(20)
    FakeSocket.last().serverClose(1006)
    expect(lines).toContain('state disconnected -> connecting')
    expect(lines).toContain('state connecting -> connected')
    expect(lines.some((l) => /^reconnecting in \d+ ms$/.test(l))).toBe(true)
    expect(lines).toContain('resumed venue:1')
    expect(lines).toContain('falling back to HTTP polling')
    c.disconnect()

    const quiet = vi.spyOn(console, 'debug').mockImplementation(() => {})
    const silent = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS })
    silent.connect()
    await flush()
    FakeSocket.last().accept()
    expect(quiet).not.toHaveBeenCalled()
    silent.disconnect()
    const loud = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, debug: true })
    loud.connect()
    expect(quiet).toHaveBeenCalledWith('[herald] state disconnected -> connecting')
    loud.disconnect()
    quiet.mockRestore()
  })

  it('isReceiving tells a fallback whose polls fail from one whose polls are answered', async () => {
    let answer: 'fail' | 'ok' = 'fail'
    const fetch = (async () => {
      if (answer === 'fail') throw new TypeError('fetch failed')
      return new Response(JSON.stringify({ channel: 'venue:1', messages: [], cursor: 'e:0', recovered: true, more: false }), {
        status: 200,
        headers: { 'content-type': 'application/json' },
      })
    }) as unknown as NonNullable<ConstructorParameters<typeof RealtimeService>[0]['fetch']>
    const s = new RealtimeService({
      url: 'ws://x/ws',
      webSocket: WS,
      minReconnectDelay: 10,
      maxReconnectDelay: 10,
      fallbackAfter: 1,
      pollInterval: 50,
      minPollGap: 10,
      longPollWait: 0,
      fetch,
    })
    const seen: boolean[] = []
    s.on('receiving', (r) => seen.push(r))
    s.subscribe('venue:1', () => {})
    s.connect()
    await flush()
    FakeSocket.last().serverClose(1006)
    expect(s.state).toBe('polling')
    await vi.advanceTimersByTimeAsync(100)
    expect(s.isReceiving).toBe(false)
    answer = 'ok'
    await vi.advanceTimersByTimeAsync(200)
    expect(s.state).toBe('polling')
    expect(s.isReceiving).toBe(true)
    answer = 'fail'
    await vi.advanceTimersByTimeAsync(300)
    expect(s.isReceiving).toBe(false)
    expect(seen).toEqual([true, false])
    s.disconnect()
  })

  it('surfaces recovered:false as a gap', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 10 })
    const gaps: unknown[] = []
    c.onGap((g) => gaps.push(g))
    c.subscribe('venue:1', () => {})
    c.connect()
    await flush()
    let s = FakeSocket.last()
    s.accept()
    s.push({ type: 'subscribed', id: s.ofType('subscribe')[0]!.id, channel: 'venue:1', cursor: 'e:5', recovered: true, missed: 0 })
    s.serverClose(1006)
    await vi.advanceTimersByTimeAsync(20)
    s = FakeSocket.last()
    s.accept()
    s.push({ type: 'subscribed', id: s.ofType('subscribe')[0]!.id, channel: 'venue:1', cursor: 'n:0', recovered: false, missed: 0 })
    expect(gaps).toEqual([{ channel: 'venue:1', since: 'e:5', cursor: 'n:0' }])
    c.disconnect()
  })

  it('honours disconnect.reconnect:false and does not retry', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 10 })
    const errors: unknown[] = []
    c.on('error', (e) => errors.push(e))
    c.connect()
    await flush()
    const s = FakeSocket.last()
    s.accept()
    s.push({ type: 'disconnect', code: 4001, reason: 'unauthorized', reconnect: false })
    s.serverClose(4001)
    await vi.advanceTimersByTimeAsync(1000)
    expect(c.state).toBe('disconnected')
    expect(FakeSocket.instances).toHaveLength(1)
    expect(errors).toEqual([{ code: 4001, message: 'unauthorized' }])
  })

  it('asks getToken again after a 4005 close', async () => {
    let calls = 0
    const c = new RealtimeClient({
      url: 'ws://x/ws',
      webSocket: WS,
      minReconnectDelay: 10,
      maxReconnectDelay: 10,
      getToken: () => makeToken(`u${++calls}`, 3600),
    })
    c.connect()
    await flush()
    FakeSocket.last().accept()
    expect(calls).toBe(1)
    const s = FakeSocket.last()
    s.push({ type: 'disconnect', code: 4005, reason: 'token expired', reconnect: true })
    s.serverClose(4005)
    await vi.advanceTimersByTimeAsync(20)
    await flush()
    expect(calls).toBe(2)
    FakeSocket.last().open()
    expect(FakeSocket.last().ofType('connect')[0]!.token).toBe(makeTokenSubject(FakeSocket.last(), 'u2'))
    c.disconnect()
  })

  it('retries a subscribe refused with 1011 or 1005, but not one refused with 1002', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 100 })
    const errors: unknown[] = []
    c.on('error', (e) => errors.push(e))
    c.subscribe('venue:1', () => {})
    c.subscribe('venue:2', () => {})
    c.connect()
    await flush()
    const s = FakeSocket.last()
    s.accept()
    const [a, b] = s.ofType('subscribe')
    s.push({ type: 'error', id: a!.id, code: 1011, message: 'history is unavailable; try again' })
    s.push({ type: 'error', id: b!.id, code: 1002, message: 'permission denied' })
    await vi.advanceTimersByTimeAsync(200)
    expect(s.ofType('subscribe').map((f) => f.channel)).toEqual(['venue:1', 'venue:2', 'venue:1'])
    expect(errors).toEqual([{ code: 1002, message: 'permission denied', channel: 'venue:2' }])
    c.disconnect()
  })

  it('treats two missed pings as a dead socket', async () => {
    const c = new RealtimeClient({ url: 'ws://x/ws', webSocket: WS, minReconnectDelay: 10, maxReconnectDelay: 10 })
    c.connect()
    await flush()
    const s = FakeSocket.last()
    s.accept({ ping_interval: 1 })
    await vi.advanceTimersByTimeAsync(1000)
    s.push({ type: 'ping' })
    expect(s.ofType('pong')).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(2400)
    expect(c.state).toBe('connected')
    await vi.advanceTimersByTimeAsync(200)
    expect(c.state).toBe('reconnecting')
    c.disconnect()
  })

  it('falls back to polling when no WebSocket exists at all', async () => {
    const fetches: string[] = []
    const svc = new RealtimeService({
      url: 'ws://x/ws',
      webSocket: class {
        constructor() {
          throw new Error('blocked')
        }
      } as unknown as WebSocketConstructor,
      fetch: async (u) => {
        fetches.push(u)
        return { status: 200, ok: true, headers: { get: () => null }, json: async () => ({ messages: [], cursor: 'e:0', recovered: true, more: false }) }
      },
      longPollWait: 0,
      pollInterval: 1000,
      minReconnectDelay: 10,
      maxReconnectDelay: 100,
    })
    svc.subscribe('venue:1', () => {})
    svc.connect()
    await flush()
    expect(svc.state).toBe('polling')
    await vi.advanceTimersByTimeAsync(10)
    expect(fetches[0]).toMatch(/^http:\/\/x\/api\/channels\/venue:1\/messages\?limit=1000&since=\d+$/)
    svc.disconnect()
    expect(svc.state).toBe('disconnected')
  })
})

function makeTokenSubject(s: FakeSocket, sub: string): string {
  const token = String(s.ofType('connect')[0]!.token)
  const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string }
  return claims.sub === sub ? token : `token for ${claims.sub}`
}

describe('RealtimeService polling (fake fetch)', () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  const noSocket = class {
    constructor() {
      throw new Error('blocked')
    }
  } as unknown as WebSocketConstructor

  it('holds long polls for at most maxLongPolls streams, and stops a stream answered 403', async () => {
    const urls: string[] = []
    const svc = new RealtimeService({
      url: 'ws://x/ws',
      webSocket: noSocket,
      maxLongPolls: 2,
      longPollWait: 7,
      pollInterval: 1_000,
      minReconnectDelay: 10_000,
      fetch: async (u) => {
        urls.push(u)
        const denied = u.includes('/venue:3/')
        return {
          status: denied ? 403 : 200,
          ok: !denied,
          headers: { get: () => null },
          json: async () =>
            denied ? { error: { code: 1002, message: 'permission denied' } } : { messages: [], cursor: 'e:0', recovered: true, more: false },
        }
      },
    })
    const errors: Array<{ code: number; channel?: string }> = []
    svc.on('error', (e) => errors.push(e))
    svc.subscribe('venue:1', () => {})
    svc.connect()
    await vi.advanceTimersByTimeAsync(1)
    expect(urls.filter((u) => u.includes('wait=7'))).toHaveLength(1)
    svc.subscribe('venue:2', () => {})
    svc.subscribe('venue:3', () => {})
    await vi.advanceTimersByTimeAsync(1)
    expect(errors).toEqual([
      { code: 0, message: 'cannot open a WebSocket: Error: blocked' },
      { code: 1002, message: 'permission denied', channel: 'venue:3' },
    ])
    urls.length = 0
    await vi.advanceTimersByTimeAsync(2_500)
    expect(errors).toHaveLength(2) // the socket probes do not repeat the "cannot open" error
    // Two streams left (venue:1, venue:2): both may long-poll; venue:3 is not polled again.
    expect(urls.some((u) => u.includes('/venue:3/'))).toBe(false)
    expect(urls.filter((u) => u.includes('/venue:2/')).every((u) => u.includes('wait=7'))).toBe(true)
    svc.disconnect()
  })

  it('asks getToken once for all streams when the token expired', async () => {
    let calls = 0
    const auths: string[] = []
    const svc = new RealtimeService({
      url: 'ws://x/ws',
      webSocket: noSocket,
      getToken: async () => makeToken(`t${++calls}`, 3600),
      longPollWait: 0,
      pollInterval: 60_000,
      fetch: async (_u, init) => {
        auths.push(init?.headers?.authorization ?? '')
        return { status: 200, ok: true, headers: { get: () => null }, json: async () => ({ messages: [], cursor: 'e:0', recovered: true, more: false }) }
      },
    })
    for (const c of ['a:1', 'a:2', 'a:3']) svc.subscribe(c, () => {})
    svc.connect()
    await vi.advanceTimersByTimeAsync(1)
    expect(calls).toBe(1)
    expect(auths).toHaveLength(4) // three channels and the inbox
    expect(new Set(auths).size).toBe(1)
    svc.disconnect()
  })
})
