/**
 * herald-realtime/server: publish to Herald from an application's backend
 * (README, "Publishing from your backend"). Plain `fetch` and Web Crypto only, so it runs on
 * Node ≥ 20, Deno, Bun and edge runtimes (Next.js route handlers, Workers)
 * without dependencies.
 *
 * Every publish carries an idempotency key (one per call, reused by its
 * retries), so a retry after a network failure, a timeout, or a 408/503
 * ("outcome unknown") answer never stores a message twice: within
 * `limits.idempotency_window` Herald answers a repeated key with the
 * original offset and cursor.
 */

/** Options of {@link getRealtimeServer}; each falls back to the environment. */
export interface RealtimeServerOptions {
  /**
   * Herald's HTTP origin, e.g. `http://localhost:8080` (a `ws://…/ws` URL is
   * accepted too). Default: `HERALD_URL`, else `http://localhost:$WEBSOCKET_PORT`
   * (8080).
   */
  url?: string
  /** One of the server's `auth.api_keys`. Default: `HERALD_API_KEY`. */
  apiKey?: string
  /** The server's `auth.hmac_secret`; needed by {@link RealtimeServer.createToken} only. Default: `HERALD_HMAC_SECRET`. */
  hmacSecret?: string
  /** Time one attempt may take, in ms (default 10 000). */
  timeout?: number
  /** Retries after the first attempt, for network failures, timeouts, 408, 429 and 5xx (default 3). */
  retries?: number
  /** A `fetch` to use instead of the global one (tests, instrumented clients). */
  fetch?: typeof fetch
}

/** Where a published message landed. */
export interface PublishResult {
  /** Its offset in the channel or inbox. */
  offset: number
  /** The cursor just after it (`"{epoch}:{offset}"`). */
  cursor: string
}

/** Per-call options of a publish. */
export interface PublishOptions {
  /**
   * The idempotency key (1–200 printable ASCII characters, no spaces). By
   * default every call gets a fresh random one, reused by its own retries;
   * pass your own (an event id, say) to make repeats across calls or
   * processes store once too.
   */
  idempotencyKey?: string
}

/** One item of {@link RealtimeServer.batch}. */
export type BatchItem =
  | { action: 'broadcast'; channel: string; data: unknown; idempotencyKey?: string }
  | { action: 'notify'; userId: string; data: unknown; idempotencyKey?: string }

/** One item's outcome in a batch: published, or refused on its own. */
export type BatchResult =
  | (PublishResult & { ok: true; channel?: string; userId?: string })
  | { ok: false; error: { code: number; message: string } }

/** `GET /api/websocket`: the node's status (the seed's `getStats()`). */
export interface ServerStats {
  node: string
  uptime_s: number
  connections: number
  users: number
  channels: number
  subscriptions: number
  messages_in: number
  messages_out: number
  engine: string
  /** Several nodes on one engine (Redis): the whole cluster, from the nodes' own reports. */
  cluster?: {
    nodes: number
    connections: number
    subscriptions: number
    members: { node: string; connections: number; users: number; subscriptions: number; uptime_s: number }[]
  }
  [key: string]: unknown
}

/** Options of {@link RealtimeServer.createToken}. */
export interface TokenOptions {
  /** Lifetime in seconds (default 3600). */
  ttl?: number
  /** Channel names or `prefix:*` / `*` patterns for `claim` namespaces. */
  channels?: string[]
  /** `admin` may subscribe anywhere. */
  role?: string
}

/** The backend's handle on Herald. */
export interface RealtimeServer {
  /** Publishes `data` to `channel`. */
  broadcastToChannel(channel: string, data: unknown, options?: PublishOptions): Promise<PublishResult>
  /** Sends `data` to every connection of `userId` (and keeps it in the user's inbox). */
  sendNotification(userId: string, data: unknown, options?: PublishOptions): Promise<PublishResult>
  /** The node's status. */
  getStats(): Promise<ServerStats>
  /** Many publishes in one request and one durable commit; one result per item, in order. */
  batch(items: BatchItem[]): Promise<BatchResult[]>
  /** A HS256 client token for `userId` (needs `hmacSecret`). */
  createToken(userId: string, options?: TokenOptions): Promise<string>
}

/**
 * A failed call: `status` is the HTTP status (0 when no answer came), `code`
 * Herald's numeric error code when the server gave one.
 */
export class HeraldError extends Error {
  readonly status: number
  readonly code: number | undefined

  constructor(message: string, status: number, code?: number) {
    super(message)
    this.name = 'HeraldError'
    this.status = status
    this.code = code
  }
}

const DEFAULT_TIMEOUT = 10_000
const DEFAULT_RETRIES = 3
/** Backoff between attempts: 200 ms doubling, full jitter, at most 5 s. */
const RETRY_BASE = 200
const RETRY_MAX = 5_000

/**
 * Returns a client for the Herald server at `options.url`. As in the seed
 * application, `getRealtimeServer()` alone (or with a port number) works:
 * the URL, API key and secret then come from `HERALD_URL` (or
 * `WEBSOCKET_PORT`), `HERALD_API_KEY` and `HERALD_HMAC_SECRET`.
 *
 * Every call returns a promise that is already marked handled: code written
 * for a synchronous server (`server.broadcastToChannel(…)` without `await`)
 * never crashes the process on a failed publish. Await the call to see
 * failures.
 */
export function getRealtimeServer(optionsOrPort: RealtimeServerOptions | number = {}): RealtimeServer {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env ?? {}
  const given: RealtimeServerOptions = typeof optionsOrPort === 'number' ? {} : (optionsOrPort ?? {})
  const port = typeof optionsOrPort === 'number' ? optionsOrPort : (env.WEBSOCKET_PORT ?? 8080)
  const options = {
    ...given,
    url: given.url ?? env.HERALD_URL ?? `http://localhost:${port}`,
    apiKey: given.apiKey ?? env.HERALD_API_KEY ?? '',
    hmacSecret: given.hmacSecret ?? env.HERALD_HMAC_SECRET,
  }
  if (options.apiKey === '') {
    throw new TypeError('getRealtimeServer: an API key is required (`apiKey`, or HERALD_API_KEY in the environment)')
  }
  const origin = httpOrigin(options.url)
  const timeout = options.timeout ?? DEFAULT_TIMEOUT
  const retries = Math.max(0, options.retries ?? DEFAULT_RETRIES)
  const doFetch = options.fetch ?? globalThis.fetch
  if (typeof doFetch !== 'function') {
    throw new TypeError('getRealtimeServer: no global fetch; pass `fetch` (Node ≥ 20 has one)')
  }

  async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown, key?: string): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${options.apiKey}` }
    if (body !== undefined) headers['content-type'] = 'application/json'
    if (key !== undefined) headers['idempotency-key'] = key
    const payload = body === undefined ? undefined : JSON.stringify(body)
    let last: HeraldError = new HeraldError('not attempted', 0)
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await sleep(retryDelay(attempt, last))
      let response: Response
      try {
        response = await doFetch(`${origin}${path}`, {
          method,
          headers,
          body: payload,
          signal: AbortSignal.timeout(timeout),
        })
      } catch (e) {
        // No answer (refused, reset, timed out): the outcome is unknown, and
        // the same idempotency key makes the retry safe.
        const reason = e instanceof Error ? e.message : String(e)
        last = new HeraldError(`Herald unreachable at ${origin}: ${reason}`, 0)
        continue
      }
      const text = await response.text().catch(() => '')
      if (response.ok) {
        try {
          return JSON.parse(text) as T
        } catch {
          throw new HeraldError(`Herald answered ${response.status} with a body that is not JSON`, response.status)
        }
      }
      last = errorFrom(response, text)
      if (!retryable(response.status)) throw last
    }
    throw last
  }

  async function publish(path: string, data: unknown, options?: PublishOptions): Promise<PublishResult> {
    const key = options?.idempotencyKey ?? newKey()
    const answer = await call<{ offset: number; cursor: string }>('POST', path, data === undefined ? null : data, key)
    return { offset: answer.offset, cursor: answer.cursor }
  }

  return {
    broadcastToChannel(channel, data, options) {
      return handled(publish(`/api/channels/${encodeURIComponent(channel)}/messages`, data, options))
    },
    sendNotification(userId, data, options) {
      return handled(publish(`/api/users/${encodeURIComponent(userId)}/notifications`, data, options))
    },
    getStats() {
      return handled(call<ServerStats>('GET', '/api/websocket'))
    },
    async batch(items) {
      if (!Array.isArray(items)) throw new TypeError('batch: items must be an array')
      const wire = items.map((item) => {
        const { idempotencyKey, ...rest } = item
        return { ...rest, data: rest.data === undefined ? null : rest.data, idempotency_key: idempotencyKey ?? newKey() }
      })
      const answer = await call<{ results: BatchResult[] }>('POST', '/api/batch', { items: wire })
      return answer.results
    },
    async createToken(userId, tokenOptions = {}) {
      if (!options.hmacSecret) {
        throw new TypeError('createToken needs `hmacSecret` (the server\'s auth.hmac_secret)')
      }
      return signHs256(options.hmacSecret, userId, tokenOptions)
    },
  }
}

/** `ws://host/ws` → `http://host`; an HTTP origin stays as it is (without a trailing slash). */
function httpOrigin(url: string): string {
  const u = new URL(url)
  if (u.protocol === 'ws:') u.protocol = 'http:'
  if (u.protocol === 'wss:') u.protocol = 'https:'
  let path = u.pathname.replace(/\/+$/, '')
  if (path.endsWith('/ws')) path = path.slice(0, -3)
  return `${u.protocol}//${u.host}${path}`
}

/** Worth another attempt: the outcome is unknown (408, 5xx) or the server asked us to wait (429). */
function retryable(status: number): boolean {
  return status === 408 || status === 429 || status === 502 || status === 503 || status === 504
}

function retryDelay(attempt: number, last: HeraldError & { retryAfter?: number }): number {
  const ceiling = Math.min(RETRY_MAX, RETRY_BASE * 2 ** (attempt - 1))
  const jittered = Math.random() * ceiling
  // `Retry-After` (429, 503) is a floor, capped so one call never waits long.
  return last.retryAfter !== undefined ? Math.min(RETRY_MAX, Math.max(jittered, last.retryAfter)) : jittered
}

function errorFrom(response: Response, text: string): HeraldError {
  let code: number | undefined
  let message = `Herald answered ${response.status}`
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }
    if (typeof body.error?.code === 'number') code = body.error.code
    if (typeof body.error?.message === 'string') message = body.error.message
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  const error: HeraldError & { retryAfter?: number } = new HeraldError(message, response.status, code)
  const after = Number(response.headers.get('retry-after'))
  if (Number.isFinite(after) && after > 0) error.retryAfter = after * 1000
  return error
}

/** `p`, marked handled so an unawaited failure is no unhandled rejection; awaiting it still throws. */
function handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {})
  return p
}

function newKey(): string {
  return globalThis.crypto.randomUUID()
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function base64url(bytes: Uint8Array): string {
  let binary = ''
  for (const b of bytes) binary += String.fromCharCode(b)
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

async function signHs256(secret: string, sub: string, options: TokenOptions): Promise<string> {
  if (typeof sub !== 'string' || sub === '') throw new TypeError('createToken: userId must be a non-empty string')
  const ttl = options.ttl ?? 3600
  if (!Number.isFinite(ttl) || ttl <= 0) throw new TypeError('createToken: ttl must be a positive number of seconds')
  const encoder = new TextEncoder()
  const iat = Math.floor(Date.now() / 1000)
  const claims: Record<string, unknown> = { sub, iat, exp: iat + Math.floor(ttl) }
  if (options.channels !== undefined) claims.channels = options.channels
  if (options.role !== undefined) claims.role = options.role
  const part = (v: unknown) => base64url(encoder.encode(JSON.stringify(v)))
  const signingInput = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`
  const key = await globalThis.crypto.subtle.importKey(
    'raw',
    encoder.encode(secret),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['sign'],
  )
  const signature = await globalThis.crypto.subtle.sign('HMAC', key, encoder.encode(signingInput))
  return `${signingInput}.${base64url(new Uint8Array(signature))}`
}

// ------------------------------------------------------------------ webhooks

/** The events a `[[webhooks]]` entry can ask for (README.md, "Verifying webhooks"). */
export type WebhookEventName =
  | 'channel_occupied'
  | 'channel_vacated'
  | 'user_online'
  | 'user_offline'
  | 'notification_undelivered'

/**
 * A webhook's body: `{"id","event","ts","data"}`. Delivery is at least
 * once: deduplicate by `id`. `ts` is when the event happened, Unix ms.
 * `data` carries `channel` (channel events) or `userId` (user events);
 * `notification_undelivered` carries `{userId, offset, cursor, data}`.
 */
export interface WebhookEvent<D = Record<string, unknown>> {
  id: string
  event: WebhookEventName | (string & {})
  ts: number
  data: D
}

/** Why {@link verifyWebhook} refused a request. */
export type WebhookVerificationReason =
  /** No `Herald-Signature` header. */
  | 'missing_header'
  /** The header has no single numeric `t=` or no `v1=`. */
  | 'malformed_header'
  /** `t` is further than `toleranceSeconds` from now: a replay, or a clock far off. */
  | 'timestamp_out_of_tolerance'
  /** No `v1=` entry is the HMAC of this body with this secret: tampered, or the wrong secret. */
  | 'no_matching_signature'
  /** Signed correctly, but the body is not a JSON object. */
  | 'malformed_body'

/**
 * Thrown by {@link verifyWebhook} and {@link verifyWebhookAsync} when a
 * request is not a genuine, fresh Herald webhook. Answer it with 400 (Herald
 * retries anything but a 2xx, so a request that will never verify should
 * not get a 5xx from you either way).
 */
export class WebhookVerificationError extends Error {
  readonly reason: WebhookVerificationReason

  constructor(reason: WebhookVerificationReason, message: string) {
    super(message)
    this.name = 'WebhookVerificationError'
    this.reason = reason
  }
}

/** Options of {@link verifyWebhook}. */
export interface VerifyWebhookOptions {
  /**
   * How far the header's `t` may be from now, in seconds, either way
   * (default 300). Herald signs every attempt afresh, so a retry an hour
   * later still carries a fresh `t`; an old `t` is a replay.
   */
  toleranceSeconds?: number
  /** "Now", for tests: Unix time in **seconds**, or a Date. Default: the clock. */
  now?: number | Date
}

/** The body bytes as signed, and the parsed header. */
interface WebhookInput {
  signed: Uint8Array<ArrayBuffer>
  body: Uint8Array
  t: string
  v1: string[]
}

const DEFAULT_TOLERANCE_S = 300

/**
 * Checks a webhook request from Herald and returns its parsed body; throws
 * {@link WebhookVerificationError} otherwise (Stripe's `constructEvent` and
 * Svix's `verify` work the same way).
 *
 * `rawBody` must be the body exactly as received — `await req.text()` in a
 * route handler, or the raw bytes — never a re-serialised `JSON.parse`
 * result. `signatureHeader` is the `Herald-Signature` header,
 * `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, possibly with
 * several `v1=` entries (secret rotation): any one matching is enough. The
 * comparison is constant-time, and `t` must be within `toleranceSeconds`
 * (default 300) of now.
 *
 * Synchronous, with `node:crypto` (Node ≥ 20.16, Bun): on runtimes without
 * it (edge functions, Workers, Deno) it throws a plain `Error` saying so —
 * use {@link verifyWebhookAsync} there; it does the same with Web Crypto.
 */
export function verifyWebhook<D = Record<string, unknown>>(
  rawBody: string | Uint8Array,
  signatureHeader: string | null | undefined,
  secret: string,
  options: VerifyWebhookOptions = {},
): WebhookEvent<D> {
  const createHmac = nodeCreateHmac()
  if (!createHmac) {
    throw new Error('verifyWebhook needs node:crypto (Node ≥ 20.16); on edge runtimes use `await verifyWebhookAsync(…)`')
  }
  const input = webhookInput(rawBody, signatureHeader, secret, options)
  const expected = createHmac('sha256', secret).update(input.signed).digest('hex')
  return webhookResult<D>(input, expected)
}

/**
 * {@link verifyWebhook} with Web Crypto (`crypto.subtle`), so it runs
 * everywhere: Node ≥ 20, Deno, Bun, Cloudflare Workers, Vercel and Next.js
 * edge routes. Resolves with the parsed body; rejects with
 * {@link WebhookVerificationError}.
 */
export async function verifyWebhookAsync<D = Record<string, unknown>>(
  rawBody: string | Uint8Array,
  signatureHeader: string | null | undefined,
  secret: string,
  options: VerifyWebhookOptions = {},
): Promise<WebhookEvent<D>> {
  const input = webhookInput(rawBody, signatureHeader, secret, options)
  const key = await globalThis.crypto.subtle.importKey(
    'raw',
    new TextEncoder().encode(secret),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['sign'],
  )
  const mac = new Uint8Array(await globalThis.crypto.subtle.sign('HMAC', key, input.signed))
  return webhookResult<D>(input, toHex(mac))
}

/** `createHmac` from node:crypto without importing it (an import would break edge bundles). */
function nodeCreateHmac():
  | ((alg: string, key: string) => { update(d: Uint8Array): { digest(enc: 'hex'): string } })
  | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process
  try {
    const mod = proc?.getBuiltinModule?.('node:crypto') as { createHmac?: unknown } | undefined
    return typeof mod?.createHmac === 'function' ? (mod.createHmac as ReturnType<typeof nodeCreateHmac>) : undefined
  } catch {
    return undefined
  }
}

/** Parses the header and checks the timestamp (everything but the MAC). */
function webhookInput(
  rawBody: string | Uint8Array,
  header: string | null | undefined,
  secret: string,
  options: VerifyWebhookOptions,
): WebhookInput {
  if (typeof secret !== 'string' || secret === '') throw new TypeError('verifyWebhook: the secret must be a non-empty string')
  if (typeof rawBody !== 'string' && !(rawBody instanceof Uint8Array)) {
    throw new TypeError('verifyWebhook: rawBody must be the raw body as a string or bytes (await req.text())')
  }
  if (typeof header !== 'string' || header.trim() === '') {
    throw new WebhookVerificationError('missing_header', 'no Herald-Signature header')
  }
  let t: string | null = null
  const v1: string[] = []
  for (const part of header.split(',')) {
    const eq = part.indexOf('=')
    if (eq < 0) continue
    const key = part.slice(0, eq).trim()
    const value = part.slice(eq + 1).trim()
    if (key === 't') {
      if (t !== null || !/^\d{1,15}$/.test(value)) {
        throw new WebhookVerificationError('malformed_header', 'Herald-Signature needs exactly one numeric t=')
      }
      t = value
    } else if (key === 'v1') {
      v1.push(value.toLowerCase())
    }
  }
  if (t === null || v1.length === 0) {
    throw new WebhookVerificationError('malformed_header', 'Herald-Signature needs t= and at least one v1=')
  }
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_S
  if (!(tolerance >= 0)) throw new TypeError('verifyWebhook: toleranceSeconds must be ≥ 0')
  const now =
    options.now instanceof Date ? options.now.getTime() / 1000 : (options.now ?? Date.now() / 1000)
  if (Math.abs(now - Number(t)) > tolerance) {
    throw new WebhookVerificationError(
      'timestamp_out_of_tolerance',
      `Herald-Signature t=${t} is more than ${tolerance} s from now (a replay, or a clock off)`,
    )
  }
  const body = typeof rawBody === 'string' ? new TextEncoder().encode(rawBody) : rawBody
  const prefix = new TextEncoder().encode(`${t}.`)
  const signed = new Uint8Array(prefix.length + body.length)
  signed.set(prefix)
  signed.set(body, prefix.length)
  return { signed, body, t, v1 }
}

/** Compares every `v1` with `expected` (constant time) and parses the body. */
function webhookResult<D>(input: WebhookInput, expected: string): WebhookEvent<D> {
  let matched = false
  // Every entry is compared in full, matched or not: the time taken says nothing.
  for (const given of input.v1) if (constantTimeEqual(given, expected)) matched = true
  if (!matched) {
    throw new WebhookVerificationError('no_matching_signature', 'no Herald-Signature v1= matches this body and secret')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(new TextDecoder().decode(input.body))
  } catch {
    parsed = null
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new WebhookVerificationError('malformed_body', 'the webhook body is not a JSON object')
  }
  return parsed as WebhookEvent<D>
}

/** Equal strings, in time that depends only on their lengths. */
function constantTimeEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i)
  return diff === 0
}

function toHex(bytes: Uint8Array): string {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}
