/**
 * RealtimeService: RealtimeClient plus the HTTP polling fallback (README,
 * "How reconnection, fallback and recovery behave").
 *
 * When the socket cannot be created, or fails `fallbackAfter` times in a row,
 * the service polls `/api/channels/{channel}/messages` for every subscribed
 * channel and `/api/notifications` for the notification inbox, each from its
 * cursor, holding long polls where the server does (`wait`), and keeps
 * trying the socket with backoff. The first socket that reaches `connected`
 * stops every poll (in-flight ones are aborted and their late answers
 * dropped) before the resubscribes carry the cursors, so nothing is lost or
 * delivered twice across the switch.
 *
 * Polling stays well under the server's per-user poll rate limit: polls of
 * one stream start at least `minPollGap` apart (a busy channel's messages are
 * gathered into one page rather than fetched one request each), pages ask for
 * up to 1000 messages, and a 429 makes that stream wait its `Retry-After`
 * before polling again from the same cursor, so nothing is skipped.
 */
import { backoffDelay } from './backoff.js'
import { RealtimeClient, type PollAnswer } from './client.js'
import { parseCursor } from './cursor.js'
import type { FetchLike, PresenceInfo, PresenceStats, RealtimeError } from './types.js'

/** One stream being polled; `null` key is the notification inbox. */
interface PollLoop {
  readonly abort: AbortController
  stopped: boolean
}

const INBOX = '\u0000inbox'

export class RealtimeService extends RealtimeClient {
  private readonly loops = new Map<string, PollLoop>()
  private fallbackActive = false
  /**
   * After a 429 the server's poll budget is per user, shared by every stream
   * of this service: requests then go through one first-come queue, one per
   * `throttleSpacing` ms. Without it, streams whose long polls end exactly
   * as a token refills take every token, and a stream that got a 429 (and
   * has messages waiting) can lose the race forever.
   */
  private throttleSpacing = 0
  private throttleLast = 0
  private lastRefusal = 0
  private throttleQueue: Promise<void> = Promise.resolve()

  /** True while the fallback is polling. */
  get isPolling(): boolean {
    return this.fallbackActive
  }

  protected override onSocketFailed(failures: number): void {
    if (failures >= this.options.fallbackAfter) this.startFallback()
  }

  protected override onSocketUnavailable(): void {
    this.startFallback()
  }

  protected override onChannelAdded(channel: string): void {
    if (this.fallbackActive) this.startLoop(channel)
  }

  protected override onChannelRemoved(channel: string): void {
    this.stopLoop(channel)
  }

  protected override onChannelFailed(channel: string): void {
    this.stopLoop(channel)
  }

  protected startFallback(): void {
    if (this.fallbackActive || !this.active) return
    this.fallbackActive = true
    this.log('falling back to HTTP polling', { channels: this.subscribedChannels.length })
    this.setState('polling')
    for (const channel of this.subscribedChannels) this.startLoop(channel)
    if (this.options.token || this.options.getToken || this.options.user) this.startLoop(INBOX)
  }

  protected override stopFallback(): void {
    if (!this.fallbackActive) return
    this.fallbackActive = false
    for (const key of [...this.loops.keys()]) this.stopLoop(key)
  }

  private startLoop(key: string): void {
    if (this.loops.has(key)) return
    const loop: PollLoop = { abort: new AbortController(), stopped: false }
    this.loops.set(key, loop)
    void this.runLoop(key === INBOX ? null : key, loop).finally(() => {
      if (this.loops.get(key) === loop) this.loops.delete(key)
    })
  }

  private stopLoop(key: string): void {
    const loop = this.loops.get(key)
    if (!loop) return
    this.loops.delete(key)
    loop.stopped = true
    loop.abort.abort()
  }

  /** As the client's, but over HTTP while polling (the socket is down). */
  override presence(channel: string): Promise<PresenceInfo> {
    if (!this.fallbackActive) return super.presence(channel)
    return this.presenceOverHttp(channel, '/presence').then((b) => ({
      clients: Array.isArray(b.clients) ? (b.clients as PresenceInfo['clients']) : [],
      users: Number(b.users ?? 0),
      total: Number(b.total ?? 0),
    }))
  }

  /** As the client's, but over HTTP while polling (the socket is down). */
  override presenceStats(channel: string): Promise<PresenceStats> {
    if (!this.fallbackActive) return super.presenceStats(channel)
    return this.presenceOverHttp(channel, '/presence/stats').then((b) => ({
      clients: Number(b.clients ?? 0),
      users: Number(b.users ?? 0),
    }))
  }

  /**
   * As the client's, but while the socket is not connected (polling, or
   * between reconnects) it goes over HTTP: `POST /api/notifications/read`
   * with the client's token. Rejects with the server's error otherwise
   * (1001 without a token: dev mode's `user` alone cannot mark read over
   * HTTP).
   */
  override markNotificationsRead(cursor: string): Promise<number> {
    if (this.state === 'connected') return super.markNotificationsRead(cursor)
    if (typeof cursor !== 'string' || !parseCursor(cursor)) return super.markNotificationsRead(cursor)
    return this.overHttp('/api/notifications/read', { cursor }).then((b) => {
      const unread = Number(b.unread ?? 0)
      // A socket that connected meanwhile has a newer count from its `connected` frame.
      if (this.state !== 'connected') this.readAnswered(cursor, unread)
      return unread
    })
  }

  /** `GET /api/channels/{channel}/presence[/stats]` with the client's token. */
  private presenceOverHttp(channel: string, suffix: string): Promise<Record<string, unknown>> {
    return this.overHttp(`/api/channels/${channel}${suffix}`)
  }

  /**
   * A JSON request to `path` with the client's token (a POST when `body` is
   * given); rejects with `{code, message}` from the server's error. A 401
   * with `getToken` is retried once with a fresh token.
   */
  private async overHttp(path: string, body?: unknown, retried = false): Promise<Record<string, unknown>> {
    const token = await this.authToken()
    const headers: Record<string, string> = { accept: 'application/json' }
    if (token) headers.authorization = `Bearer ${token}`
    const init: Parameters<FetchLike>[1] = { headers }
    if (body !== undefined) {
      init.method = 'POST'
      headers['content-type'] = 'application/json'
      init.body = JSON.stringify(body)
    }
    const res = await this.fetcher()(`${this.options.apiUrl}${path}`, init)
    const answer = (await res.json().catch(() => null)) as Record<string, unknown> | null
    if (res.status === 401 && this.options.getToken && !retried) {
      this.forceTokenRefresh()
      return this.overHttp(path, body, true)
    }
    if (!res.ok || !answer) {
      const error = (answer?.error ?? {}) as { code?: unknown; message?: unknown }
      throw {
        code: Number(error.code ?? 0),
        message: String(error.message ?? `HTTP ${res.status}`),
      } satisfies RealtimeError
    }
    return answer
  }

  private fetcher(): FetchLike {
    const f = this.options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch
    if (!f) throw new Error('herald-realtime: no fetch implementation for polling')
    return f
  }

  private pollUrl(channel: string | null, since: string | null, wait: number, token: string | null): string {
    // Channel names are limited to characters valid in a path segment.
    const path = channel === null ? '/api/notifications' : `/api/channels/${channel}/messages`
    // The largest page the server gives: a backlog takes few requests.
    const q: string[] = ['limit=1000']
    if (since) q.push(`since=${encodeURIComponent(since)}`)
    if (wait > 0) q.push(`wait=${wait}`)
    // Dev mode: the inbox of a user named without a token.
    if (channel === null && !token && this.options.user) q.push(`user=${encodeURIComponent(this.options.user)}`)
    return `${this.options.apiUrl}${path}${q.length ? `?${q.join('&')}` : ''}`
  }

  /** Polls one stream until it is stopped. Every wait is bounded and abortable. */
  private async runLoop(channel: string | null, loop: PollLoop): Promise<void> {
    const { pollInterval, longPollWait, minReconnectDelay, maxReconnectDelay, minPollGap } = this.options
    let errors = 0
    let authRetried = false
    let lastStart = -Infinity
    let minGap = minPollGap
    while (!loop.stopped) {
      const gap = lastStart + minGap - Date.now()
      if (gap > 0) {
        await this.sleep(loop, gap)
        if (loop.stopped) return
      }
      await this.throttleTurn(loop)
      if (loop.stopped) return
      lastStart = Date.now()
      const since = this.pollSince(channel)
      if (since === null) return
      const sinceIsCursor = this.hasCursor(channel)
      const wait = this.loops.size <= this.options.maxLongPolls ? Math.max(0, Math.floor(longPollWait)) : 0
      const started = Date.now()
      let answer: PollAnswer
      try {
        const token = await this.authToken()
        if (loop.stopped) return
        const headers: Record<string, string> = { accept: 'application/json' }
        if (token) headers.authorization = `Bearer ${token}`
        const res = await this.fetcher()(this.pollUrl(channel, since, wait, token), { headers, signal: loop.abort.signal })
        if (loop.stopped) return
        if (res.status === 401 && this.options.getToken && !authRetried) {
          // An expired token: fetch a new one once, then give up on this stream.
          authRetried = true
          this.forceTokenRefresh()
          continue
        }
        if (res.status === 400 || res.status === 401 || res.status === 403 || res.status === 404) {
          const body = (await res.json().catch(() => null)) as { error?: { code?: number; message?: string } } | null
          this.emitError({
            code: body?.error?.code ?? 1000,
            message: body?.error?.message ?? `polling answered ${res.status}`,
            ...(channel !== null ? { channel } : {}),
          })
          return
        }
        // Any answer but a 5xx means the server is there (a 429 too).
        this.setPollsAnswered(res.status < 500)
        if (!res.ok) {
          // 429 (poll rate limit) and 503 say when to come back; the cursor
          // has not moved, so the retry resumes exactly where this one was.
          const retryAfter = Number(res.headers.get('retry-after'))
          if (res.status === 429) this.throttle(retryAfter > 0 ? retryAfter * 1000 : minPollGap)
          // Read the (error) body so the connection goes back to the pool.
          await res.json().catch(() => null)
          errors++
          await this.sleep(
            loop,
            retryAfter > 0 ? retryAfter * 1000 : backoffDelay(errors, minReconnectDelay, maxReconnectDelay, this.options.random) + 1,
          )
          continue
        }
        answer = (await res.json()) as PollAnswer
      } catch {
        if (loop.stopped) return
        this.setPollsAnswered(false)
        errors++
        await this.sleep(loop, backoffDelay(errors, minReconnectDelay, maxReconnectDelay, this.options.random) + 1)
        continue
      }
      if (loop.stopped) return
      errors = 0
      authRetried = false
      this.deliverPolled(channel, sinceIsCursor ? since : null, answer)
      // The rest of a backlog comes sooner, but still paced: a stream that
      // always has more (a channel faster than a page) can't spin.
      minGap = answer.more ? minPollGap / 4 : minPollGap
      if (answer.more) continue
      const held = Date.now() - started
      // A server that answered an empty poll at once does not hold long polls:
      // fall back to polling every pollInterval.
      const longPolled = wait > 0 && (answer.messages?.length > 0 || held >= (wait * 1000) / 2)
      if (!longPolled) await this.sleep(loop, pollInterval)
    }
  }

  /** The budget ran out: from now on, one request per `spacing` ms, first come first served. */
  private throttle(spacing: number): void {
    this.throttleSpacing = Math.max(this.throttleSpacing, spacing)
    this.throttleLast = Date.now()
    this.lastRefusal = Date.now()
  }

  /** Waits for this loop's turn while throttled; at once otherwise. */
  private async throttleTurn(loop: PollLoop): Promise<void> {
    if (this.throttleSpacing === 0) return
    // A quiet minute without a 429: the budget has room again.
    if (Date.now() - this.lastRefusal > 60_000) {
      this.throttleSpacing = 0
      return
    }
    const previous = this.throttleQueue
    let release!: () => void
    this.throttleQueue = new Promise<void>((r) => (release = r))
    try {
      await previous
      const wait = this.throttleLast + this.throttleSpacing - Date.now()
      if (wait > 0 && !loop.stopped) await this.sleep(loop, wait)
      this.throttleLast = Date.now()
    } finally {
      release()
    }
  }

  private sleep(loop: PollLoop, ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (loop.stopped) return resolve()
      const t = setTimeout(done, ms)
      loop.abort.signal.addEventListener('abort', done, { once: true })
      function done(): void {
        clearTimeout(t)
        resolve()
      }
    })
  }
}
