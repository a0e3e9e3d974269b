/**
 * RealtimeClient: one WebSocket to Herald, kept alive (README, "Without React").
 *
 * It connects with a token, resubscribes every channel with its last cursor
 * after a reconnect, refreshes the token before `exp`, treats two missed pings
 * as a dead socket, reconnects with exponential backoff and full jitter, and
 * honours the server's `disconnect.reconnect`. Every message reaches the app
 * through a `Position`, so a message is delivered at most once and in order
 * whichever transport brought it; the polling fallback (RealtimeService) plugs
 * into the protected hooks at the bottom and shares those positions.
 *
 * It must never deliver a message twice, never block the app on a handler, and
 * never leave a timer running after `disconnect()`.
 */
import { backoffDelay } from './backoff.js'
import { Position, parseCursor, type Cursor } from './cursor.js'
import { Emitter, reportListenerError } from './emitter.js'
import { refreshDelay, tokenExpiry } from './token.js'
import type {
  ConnectionState,
  DebugLogger,
  GapInfo,
  MessageHandler,
  MessageMeta,
  NotificationHandler,
  NotificationMeta,
  PresenceEntry,
  PresenceHandler,
  PresenceInfo,
  PresenceStats,
  RealtimeError,
  RealtimeOptions,
  SubscribeOptions,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js'

const OPEN = 1

/** Events emitted by `on(...)`. */
export interface ClientEvents {
  state: ConnectionState
  gap: GapInfo
  error: RealtimeError
  /** A channel subscription is live on the socket (after a connect or reconnect). */
  subscribed: { channel: string; cursor: string; recovered: boolean }
  /** {@link RealtimeClient.isReceiving} changed. */
  receiving: boolean
  /** Another client joined or left a subscribed channel (namespaces with `join_leave`). */
  presence: { channel: string; kind: 'join' | 'leave'; entry: PresenceEntry }
  /** {@link RealtimeClient.unreadCount} changed: the user's unread notifications. */
  unread: number
}

/** One `subscribe` call's handlers. */
interface Handler {
  fn: MessageHandler<any>
  onJoin?: PresenceHandler
  onLeave?: PresenceHandler
}

/** One subscribed channel: its handlers and its position. */
interface ChannelState {
  readonly handlers: Set<Handler>
  readonly position: Position
  /** When the app subscribed; the first poll asks for messages since then. */
  readonly since: number
  /** The `since` cursor sent with the last subscribe, to tell a lost gap. */
  sentSince: string | null
  /** Id of the subscribe command in flight, to attribute its error. */
  pendingId: number | null
  /** Set after a permission/validation error: not retried until reconnect. */
  failed: boolean
}

interface Pending {
  resolve(frame: Frame): void
  reject(err: RealtimeError): void
}

type Frame = { type: string; id?: number; [key: string]: unknown }

/** A page of messages from a polling endpoint (`GET /api/channels/{channel}/messages` or `/api/notifications`). */
export interface PollAnswer {
  messages: Array<{ offset: number; cursor: string; ts: number; data: unknown }>
  cursor: string
  recovered: boolean
  more: boolean
  /** `/api/notifications` only: notifications kept after the user's read cursor. */
  unread?: number
}

/**
 * `ws://host/ws` → `http://host`. Parsed by hand: React Native's URL
 * polyfill does not implement `protocol`/`host`.
 */
export function defaultApiUrl(url: string): string {
  const m = /^(wss?|https?):\/\/([^/?#]+)/i.exec(url)
  if (!m) throw new TypeError(`herald-realtime: url must be ws://… or wss://…, got ${JSON.stringify(url)}`)
  const secure = /^(wss|https)$/i.test(m[1]!)
  return `${secure ? 'https' : 'http'}://${m[2]}`
}

/** Closes whose reconnect the spec forbids when the server sent no `disconnect`. */
const FINAL_CLOSE = new Set([1000, 1009, 4001, 4007])

export class RealtimeClient {
  protected readonly options: Required<
    Pick<
      RealtimeOptions,
      | 'minReconnectDelay'
      | 'maxReconnectDelay'
      | 'fallbackAfter'
      | 'pollInterval'
      | 'longPollWait'
      | 'maxLongPolls'
      | 'minPollGap'
      | 'connectTimeout'
    >
  > &
    RealtimeOptions & { apiUrl: string }

  private currentState: ConnectionState = 'disconnected'
  private readonly events = new Emitter<ClientEvents>()
  private readonly channels = new Map<string, ChannelState>()
  private readonly notificationHandlers = new Set<{ fn: NotificationHandler<any> }>()
  protected readonly inbox = new Position()
  /** Set once the socket was asked to resume the inbox, to tell a lost gap. */
  private inboxSince: string | null = null
  /** The user's unread notifications, as last told by the server plus live arrivals since. */
  private unread = 0
  /**
   * The newest inbox offset {@link RealtimeClient.unread} accounts for: a
   * live notification at or before it is already in the count (a replay
   * after a resume), one past it adds one.
   */
  private unreadThrough: Cursor | null = null
  private readonly startedAt = Date.now()

  private socket: WebSocketLike | null = null
  /** Bumped whenever a socket is abandoned, so late callbacks of old sockets are ignored. */
  private generation = 0
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private wanted = false
  private failures = 0
  private lastDisconnect: { code: number; reason: string; reconnect: boolean } | null = null
  private lastErrorCode = 0
  private authRetried = false
  private reportedNoSocket = false

  private token: string | null
  private tokenExpiresAt: number | null = null
  private forceNewToken = false
  private tokenRequest: Promise<string | null> | null = null

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null
  private connectTimer: ReturnType<typeof setTimeout> | null = null
  private refreshTimer: ReturnType<typeof setTimeout> | null = null
  private pingIntervalMs = 25_000

  constructor(options: RealtimeOptions) {
    if (!options || typeof options.url !== 'string') throw new TypeError('herald-realtime: options.url is required')
    this.options = {
      minReconnectDelay: 500,
      maxReconnectDelay: 20_000,
      fallbackAfter: 3,
      pollInterval: 30_000,
      longPollWait: 25,
      maxLongPolls: 4,
      minPollGap: 1000,
      connectTimeout: 10_000,
      ...options,
      apiUrl: (options.apiUrl ?? defaultApiUrl(options.url)).replace(/\/+$/, ''),
    }
    this.token = options.token ?? null
    this.tokenExpiresAt = this.token ? tokenExpiry(this.token) : null
    this.log = debugLogger(options.debug)
  }

  /** The debug log (a no-op unless `debug` or `DEBUG=herald:*` asks for it). */
  protected readonly log: DebugLogger

  // ---------------------------------------------------------------- public API

  /** The current connection state. */
  get state(): ConnectionState {
    return this.currentState
  }

  /**
   * Whether updates are actually arriving: connected, or polling with the
   * last poll answered. `polling` alone says the fallback is running, not
   * that the server is reachable (every poll may be failing).
   */
  get isReceiving(): boolean {
    return this.currentState === 'connected' || (this.currentState === 'polling' && this.pollsAnswered)
  }

  /** Whether the fallback's last poll was answered (see {@link RealtimeClient.isReceiving}). */
  private pollsAnswered = false

  /** The fallback reports whether its polls are answered. */
  protected setPollsAnswered(answered: boolean): void {
    if (answered === this.pollsAnswered) return
    const before = this.isReceiving
    this.pollsAnswered = answered
    if (this.isReceiving !== before) this.events.emit('receiving', this.isReceiving)
  }

  /** The same value as {@link RealtimeClient.state}, under the seed application's name. */
  getConnectionState(): ConnectionState {
    return this.currentState
  }

  /** True while the WebSocket is connected (not while polling). */
  get isConnected(): boolean {
    return this.currentState === 'connected'
  }

  /** The channels subscribed to, in subscription order. */
  get subscribedChannels(): string[] {
    return [...this.channels.keys()]
  }

  /** Starts connecting (idempotent). Subscriptions made before are kept. */
  connect(): void {
    if (this.wanted) return
    this.wanted = true
    this.failures = 0
    this.authRetried = false
    this.reportedNoSocket = false
    this.setState('connecting')
    void this.open()
  }

  /** Closes the socket, stops polling and reconnecting; subscriptions are kept for a later `connect()`. */
  disconnect(): void {
    this.wanted = false
    this.clearTimer('reconnectTimer')
    this.dropSocket(1000, 'client disconnect')
    this.stopFallback()
    this.setState('disconnected')
  }

  /**
   * Subscribes `onMessage` to `channel` (callable before the socket is up).
   * Returns the function that removes this subscription; the channel is left
   * on the server when its last handler goes. `options.onJoin` / `onLeave`
   * hear other clients joining and leaving (namespaces with `join_leave`;
   * never this client itself, and not replayed after a reconnect: read
   * {@link RealtimeClient.presence} again then).
   */
  subscribe<T = unknown>(channel: string, onMessage: MessageHandler<T>, options?: SubscribeOptions): () => void {
    if (typeof channel !== 'string' || !/^[A-Za-z0-9_\-.:@]{1,200}$/.test(channel)) {
      throw new TypeError(`herald-realtime: invalid channel name ${JSON.stringify(channel)}`)
    }
    const entry: Handler = { fn: onMessage as MessageHandler<any> }
    if (options?.onJoin) entry.onJoin = options.onJoin
    if (options?.onLeave) entry.onLeave = options.onLeave
    let ch = this.channels.get(channel)
    if (!ch) {
      ch = {
        handlers: new Set(),
        position: new Position(),
        since: Date.now(),
        sentSince: null,
        pendingId: null,
        failed: false,
      }
      this.channels.set(channel, ch)
      ch.handlers.add(entry)
      if (this.currentState === 'connected') this.sendSubscribe(channel, ch)
      this.onChannelAdded(channel)
    } else {
      ch.handlers.add(entry)
    }
    let active = true
    return () => {
      if (!active) return
      active = false
      const current = this.channels.get(channel)
      if (current !== ch) return
      ch.handlers.delete(entry)
      if (ch.handlers.size > 0) return
      this.channels.delete(channel)
      this.onChannelRemoved(channel)
      if (this.currentState === 'connected') this.send({ type: 'unsubscribe', id: this.nextId++, channel })
    }
  }

  /** Calls `fn` for each notification of the connected user. Returns the remover. */
  onNotification<T = unknown>(fn: NotificationHandler<T>): () => void {
    const entry = { fn: fn as NotificationHandler<any> }
    this.notificationHandlers.add(entry)
    return () => {
      this.notificationHandlers.delete(entry)
    }
  }

  /** Calls `fn` when the server could not fill a gap (`recovered:false`): refetch then. */
  onGap(fn: (gap: GapInfo) => void): () => void {
    return this.events.on('gap', fn)
  }

  /** Listens to `state` (the new state), `gap`, `error` or `subscribed`. Returns the remover. */
  on<K extends keyof ClientEvents & string>(event: K, fn: (arg: ClientEvents[K]) => void): () => void {
    return this.events.on(event, fn)
  }

  /**
   * Publishes over the socket (namespaces with `client_publish`, or dev mode).
   * Resolves with the message's offset; rejects when not connected or refused.
   */
  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number }> {
    if (this.currentState !== 'connected') {
      return Promise.reject({ code: 1010, message: 'not connected' } satisfies RealtimeError)
    }
    return this.request({ type: 'publish', channel, data }).then((f) => ({
      channel: String(f.channel ?? channel),
      offset: Number(f.offset),
    }))
  }

  /**
   * Who is subscribed to `channel` (a namespace with `presence` or
   * `join_leave`; the whole cluster on the Redis engine). Needs the socket
   * (RealtimeService asks over HTTP while polling): rejects with 1010 when
   * not connected, 1012 where presence is off, 1002 where this client may
   * not subscribe. Polling clients are not present.
   */
  presence(channel: string): Promise<PresenceInfo> {
    return this.presenceRequest('presence', channel).then((f) => ({
      clients: Array.isArray(f.clients) ? (f.clients as PresenceEntry[]) : [],
      users: Number(f.users ?? 0),
      total: Number(f.total ?? 0),
    }))
  }

  /** How many clients and users are subscribed to `channel` (as {@link RealtimeClient.presence}). */
  presenceStats(channel: string): Promise<PresenceStats> {
    return this.presenceRequest('presence_stats', channel).then((f) => ({
      clients: Number(f.clients ?? 0),
      users: Number(f.users ?? 0),
    }))
  }

  private presenceRequest(type: 'presence' | 'presence_stats', channel: string): Promise<Frame> {
    if (this.currentState !== 'connected') {
      return Promise.reject({ code: 1010, message: 'not connected' } satisfies RealtimeError)
    }
    return this.request({ type, channel })
  }

  /**
   * How many of the user's notifications are unread: after the user's read
   * cursor on the server. 0 until the server first tells (the `connected`
   * frame, a poll of the inbox, or a {@link RealtimeClient.markNotificationsRead}
   * answer). The `unread` event reports each change.
   *
   * The rule, so that nothing is counted twice across resumes, replays and
   * transports: every `connected` frame, every inbox poll answer and every
   * read answer *sets* the count from the server; between them, a
   * notification delivered live over the socket adds one only when its
   * offset is past the newest offset the last server count covered (the
   * inbox head the `connected` frame reported, or the answer's cursor).
   * Notifications replayed after a resume are at or before that head, so
   * they are in the count already; polled notifications never add (each
   * poll answer carries the count).
   */
  get unreadCount(): number {
    return this.unread
  }

  /**
   * The cursor of the newest notification this client knows of (the last
   * one delivered, or the inbox head the server reported at connect), or
   * null before it knows any. `markNotificationsRead(client.notificationsCursor)`
   * marks everything read.
   */
  get notificationsCursor(): string | null {
    return this.inbox.cursor
  }

  /**
   * Marks the user's notifications read up to and including `cursor` (a
   * notification's `meta.cursor`, or {@link RealtimeClient.notificationsCursor}
   * for all of them) and resolves with the new unread count, which also
   * becomes {@link RealtimeClient.unreadCount}. The server never moves the
   * read cursor backwards: an older cursor changes nothing; a cursor past the
   * newest notification counts as the newest; one of an old epoch changes
   * nothing. Over the socket this is the `ack` command: it rejects with 1010
   * when not connected (RealtimeService goes over HTTP then), 1002 for an
   * anonymous connection, 1000 for a malformed cursor.
   */
  markNotificationsRead(cursor: string): Promise<number> {
    if (typeof cursor !== 'string' || !parseCursor(cursor)) {
      return Promise.reject({ code: 1000, message: `not a cursor: ${JSON.stringify(cursor)}` } satisfies RealtimeError)
    }
    if (this.currentState !== 'connected') {
      return Promise.reject({ code: 1010, message: 'not connected' } satisfies RealtimeError)
    }
    const gen = this.generation
    return this.request({ type: 'ack', cursor }).then((f) => {
      const unread = Number(f.unread ?? 0)
      if (gen === this.generation) this.readAnswered(cursor, unread)
      return unread
    })
  }

  /**
   * The server answered a read (socket or HTTP) with `unread` after `cursor`.
   * It counted the notifications up to its head then, which is `cursor +
   * unread` when the read cursor is `cursor` (the usual case: reading up to
   * the newest): live notifications up to there are in the count already.
   */
  protected readAnswered(cursor: string, unread: number): void {
    const c = parseCursor(cursor)
    const through = this.unreadThrough
    if (c && (!through || through.epoch === c.epoch)) {
      const head = c.offset + unread
      if (!through || head > through.offset) this.unreadThrough = { epoch: c.epoch, offset: head }
    }
    this.setUnread(unread)
  }

  /** Sets the count from the server, covering the inbox up to `through`. */
  private unreadFromServer(unread: unknown, through: string): void {
    if (typeof unread !== 'number' || !Number.isFinite(unread)) return
    this.unreadThrough = parseCursor(through)
    this.setUnread(unread)
  }

  private setUnread(n: number): void {
    const next = Math.max(0, Math.floor(n))
    if (next === this.unread) return
    this.unread = next
    this.events.emit('unread', next)
  }

  /** Skips the backoff wait and tries the socket now (e.g. when the network returns). */
  reconnectNow(): void {
    if (!this.wanted || this.socket) return
    this.clearTimer('reconnectTimer')
    void this.open()
  }

  // ------------------------------------------------------------ socket lifecycle

  private async open(): Promise<void> {
    const gen = ++this.generation
    let token: string | null
    try {
      token = await this.authToken()
    } catch (err) {
      if (gen !== this.generation || !this.wanted) return
      this.events.emit('error', { code: 1001, message: `getToken failed: ${String(err)}` })
      this.socketFailed(0)
      return
    }
    if (gen !== this.generation || !this.wanted) return

    const Ctor: WebSocketConstructor | undefined =
      this.options.webSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    let sock: WebSocketLike
    try {
      if (!Ctor) throw new Error('no WebSocket implementation')
      sock = new Ctor(this.options.url)
    } catch (err) {
      // Once per connect(): the fallback keeps probing and would repeat it.
      if (!this.reportedNoSocket) {
        this.reportedNoSocket = true
        this.events.emit('error', {
          code: 0,
          message: Ctor ? `cannot open a WebSocket: ${String(err)}` : 'no WebSocket implementation: pass the webSocket option',
        })
      }
      this.onSocketUnavailable()
      this.socketFailed(0)
      return
    }
    this.socket = sock
    this.lastDisconnect = null
    this.lastErrorCode = 0
    this.connectTimer = setTimeout(() => {
      if (gen !== this.generation) return
      this.dropSocket(4000, 'connect timeout')
      this.socketFailed(0)
    }, this.options.connectTimeout)

    sock.onopen = () => {
      if (gen !== this.generation) return
      const frame: Frame = { type: 'connect', id: this.nextId++ }
      if (token) frame.token = token
      if (this.options.user) frame.user = this.options.user
      if (this.options.connectData !== undefined) frame.data = this.options.connectData
      // The inbox has a cursor only after the server reported one, i.e. for a
      // user (a token, dev mode's user, or one the connect proxy named).
      const since = this.inbox.cursor
      if (since) frame.notifications_since = since
      this.inboxSince = frame.notifications_since ? since : null
      this.send(frame)
    }
    sock.onmessage = (ev) => {
      if (gen !== this.generation) return
      let frame: Frame
      try {
        frame = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data)) as Frame
      } catch {
        return
      }
      if (frame && typeof frame === 'object') this.handleFrame(frame)
    }
    sock.onerror = () => {
      /* a close event follows */
    }
    sock.onclose = (ev) => {
      if (gen !== this.generation) return
      this.socketClosed(ev?.code ?? 1006, ev?.reason ?? '')
    }
  }

  private handleFrame(frame: Frame): void {
    this.armHeartbeat()
    switch (frame.type) {
      case 'connected':
        return this.handleConnected(frame)
      case 'subscribed':
        return this.handleSubscribed(frame)
      case 'message':
        return this.handleMessage(frame)
      case 'notification':
        return this.handleNotification(frame)
      case 'join':
        return this.handlePresence('join', frame)
      case 'leave':
        return this.handlePresence('leave', frame)
      case 'ping':
        this.send({ type: 'pong' })
        return
      case 'error':
        return this.handleError(frame)
      case 'disconnect':
        this.lastDisconnect = {
          code: Number(frame.code),
          reason: String(frame.reason ?? ''),
          reconnect: frame.reconnect === true,
        }
        return
      default:
        if (typeof frame.id === 'number') this.settle(frame.id, frame)
    }
  }

  private handleConnected(frame: Frame): void {
    this.clearTimer('connectTimer')
    if (typeof frame.ping_interval === 'number' && frame.ping_interval > 0) {
      this.pingIntervalMs = frame.ping_interval * 1000
    }
    this.failures = 0
    this.authRetried = false
    this.armHeartbeat()
    const inbox = frame.notifications as
      | { cursor?: string; recovered?: boolean; missed?: number; unread?: number }
      | undefined
    if (inbox && typeof inbox.cursor === 'string') {
      // Before the state changes, so a `state` listener reads the new count.
      this.unreadFromServer(inbox.unread, inbox.cursor)
      if (this.inboxSince) {
        this.log('resumed notifications', { since: this.inboxSince, cursor: inbox.cursor, recovered: inbox.recovered !== false, missed: inbox.missed })
      }
      if (this.inboxSince && inbox.recovered === false) {
        this.events.emit('gap', { channel: null, since: this.inboxSince, cursor: inbox.cursor })
      }
      if (this.inboxSince || !this.inbox.cursor || inbox.recovered === false) {
        this.inbox.resetFromHead(inbox.cursor, inbox.missed ?? 0)
      }
    }
    // The socket is back: polling ends before the resubscribes carry the cursors.
    this.stopFallback()
    this.setState('connected')
    for (const [name, ch] of this.channels) {
      ch.failed = false
      this.sendSubscribe(name, ch)
    }
    this.scheduleRefresh()
  }

  private handleSubscribed(frame: Frame): void {
    const name = String(frame.channel)
    const ch = this.channels.get(name)
    if (typeof frame.id === 'number') this.settle(frame.id, frame)
    if (!ch || typeof frame.cursor !== 'string') return
    // The answer to an older subscribe of this channel (unsubscribed and
    // subscribed again since): the newer answer sets the position.
    if (ch.pendingId !== null && frame.id !== ch.pendingId) return
    ch.pendingId = null
    if (ch.sentSince) {
      this.log(`resumed ${name}`, { since: ch.sentSince, cursor: frame.cursor, recovered: frame.recovered !== false, missed: frame.missed })
    }
    if (ch.sentSince && frame.recovered === false) {
      this.events.emit('gap', { channel: name, since: ch.sentSince, cursor: frame.cursor })
    }
    ch.position.resetFromHead(frame.cursor, Number(frame.missed ?? 0))
    this.events.emit('subscribed', { channel: name, cursor: frame.cursor, recovered: frame.recovered !== false })
  }

  private handleMessage(frame: Frame): void {
    const ch = this.channels.get(String(frame.channel))
    if (!ch || typeof frame.cursor !== 'string') return
    this.deliver(ch, String(frame.channel), frame as unknown as PollAnswer['messages'][number])
  }

  private handlePresence(kind: 'join' | 'leave', frame: Frame): void {
    const channel = String(frame.channel)
    const ch = this.channels.get(channel)
    const entry = frame.info as PresenceEntry | undefined
    if (!ch || !entry || typeof entry !== 'object') return
    for (const h of [...ch.handlers]) {
      const fn = kind === 'join' ? h.onJoin : h.onLeave
      if (!fn) continue
      try {
        fn(entry, channel)
      } catch (err) {
        reportListenerError(err)
      }
    }
    this.events.emit('presence', { channel, kind, entry })
  }

  private handleNotification(frame: Frame): void {
    if (typeof frame.cursor !== 'string') return
    const c = parseCursor(frame.cursor)
    const through = this.unreadThrough
    // Past what the last server count covered: a new one (see unreadCount).
    const counts = c !== null && (!through || through.epoch !== c.epoch || c.offset > through.offset)
    if (!this.deliverNotification(frame as unknown as PollAnswer['messages'][number])) return
    if (counts) {
      this.unreadThrough = c
      this.setUnread(this.unread + 1)
    }
  }

  private handleError(frame: Frame): void {
    const code = Number(frame.code)
    const message = String(frame.message ?? '')
    this.lastErrorCode = code
    if (typeof frame.id === 'number') {
      for (const [name, ch] of this.channels) {
        if (ch.pendingId === frame.id) {
          ch.pendingId = null
          if (code === 1007) return // already subscribed: the server has it
          if (code === 1005 || code === 1011) {
            // Rate limited, or history briefly unavailable: try again shortly.
            const gen = this.generation
            const { minReconnectDelay: min, maxReconnectDelay: max, random } = this.options
            setTimeout(() => {
              if (gen === this.generation && this.channels.get(name) === ch && this.currentState === 'connected') {
                this.sendSubscribe(name, ch)
              }
            }, Math.max(min, backoffDelay(2, min, max, random)))
            return
          }
          ch.failed = true
          this.events.emit('error', { code, message, channel: name })
          this.onChannelFailed(name)
          return
        }
      }
      if (this.pending.has(frame.id)) {
        this.settle(frame.id, null, { code, message })
        return
      }
    }
    if (code === 1009 && this.currentState === 'connected') {
      // The token expired while connected: refresh now, before the 4005 close.
      this.forceNewToken = true
      void this.refreshToken()
      return
    }
    this.events.emit('error', { code, message })
  }

  private socketClosed(code: number, reason: string): void {
    const wasConnected = this.currentState === 'connected'
    const said = this.lastDisconnect
    this.abandonSocket()
    if (!this.wanted) return
    if (code === 4005 || said?.code === 4005 || this.lastErrorCode === 1009) this.forceNewToken = true

    let reconnect = said ? said.reconnect : !FINAL_CLOSE.has(code)
    const finalCode = said?.code ?? code
    // An unauthorized close after an expired token: one more try with a new token.
    if (!reconnect && finalCode === 4001 && this.lastErrorCode === 1009 && this.options.getToken && !this.authRetried) {
      this.authRetried = true
      reconnect = true
    }
    if (!reconnect) {
      this.wanted = false
      this.stopFallback()
      this.setState('disconnected')
      this.events.emit('error', { code: finalCode, message: said?.reason || reason || 'connection closed' })
      return
    }
    this.socketFailed(finalCode, wasConnected)
  }

  /** Counts a failure, maybe starts the fallback, and schedules the next try. */
  private socketFailed(code: number, wasConnected = false): void {
    this.failures++
    this.onSocketFailed(this.failures)
    if (!this.wanted) return
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options
    // A socket that was up comes back quickly; 4004 (abuse) waits the longest.
    const random = this.options.random
    const delay =
      code === 4004 ? max : backoffDelay(wasConnected ? 0 : this.failures, min, max, random)
    if (this.currentState !== 'polling') this.setState('reconnecting')
    this.log(`reconnecting in ${delay} ms`, { code, failures: this.failures })
    this.clearTimer('reconnectTimer')
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      if (this.wanted && !this.socket) void this.open()
    }, delay)
  }

  /** Forgets the current socket without closing it (it closed, or is being closed). */
  private abandonSocket(): void {
    const sock = this.socket
    this.socket = null
    this.generation++
    this.clearTimer('connectTimer')
    this.clearTimer('heartbeatTimer')
    this.clearTimer('refreshTimer')
    for (const [, ch] of this.channels) ch.pendingId = null
    for (const [, p] of this.pending) p.reject({ code: 1010, message: 'connection closed' })
    this.pending.clear()
    if (sock) {
      sock.onopen = sock.onmessage = sock.onclose = null
      // Not null: Node's `ws` emits 'error' when a socket that is still
      // connecting is closed (or its TCP connection resets), and an 'error'
      // with no listener is an uncaught exception that would crash the app.
      sock.onerror = () => {}
    }
  }

  /** Closes the socket now, without waiting for a closing handshake a dead peer never sends. */
  private dropSocket(code: number, reason: string): void {
    const sock = this.socket
    this.abandonSocket()
    if (!sock) return
    try {
      const terminate = (sock as { terminate?: () => void }).terminate
      if (code !== 1000 && typeof terminate === 'function') terminate.call(sock)
      else sock.close(code, reason)
    } catch {
      /* already closed */
    }
  }

  private armHeartbeat(): void {
    this.clearTimer('heartbeatTimer')
    if (!this.socket) return
    // Two missed pings mean a dead socket; the extra half interval absorbs jitter.
    const timeout = this.pingIntervalMs * 2 + Math.min(this.pingIntervalMs / 2, 5_000)
    this.heartbeatTimer = setTimeout(() => {
      this.heartbeatTimer = null
      if (!this.socket) return
      const wasConnected = this.currentState === 'connected'
      this.dropSocket(4002, 'heartbeat timeout')
      if (this.wanted) this.socketFailed(4002, wasConnected)
    }, timeout)
  }

  // ------------------------------------------------------------------- tokens

  /** The token to use now, asking `getToken` when there is none or it is (nearly) expired. */
  protected authToken(): Promise<string | null> {
    const { getToken } = this.options
    if (!getToken) return Promise.resolve(this.token)
    const stale = this.tokenExpiresAt !== null && this.tokenExpiresAt - Date.now() < 1_000
    if (this.token && !stale && !this.forceNewToken) return Promise.resolve(this.token)
    // One call at a time: the socket and every poll loop share its answer.
    this.tokenRequest ??= (async () => {
      try {
        const next = (await getToken()) ?? null
        this.forceNewToken = false
        this.token = next
        this.tokenExpiresAt = next ? tokenExpiry(next) : null
        return next
      } finally {
        this.tokenRequest = null
      }
    })()
    return this.tokenRequest
  }

  /** Makes the next `authToken()` ask `getToken` for a new token. */
  protected forceTokenRefresh(): void {
    this.forceNewToken = true
  }

  private scheduleRefresh(): void {
    this.clearTimer('refreshTimer')
    if (!this.options.getToken || this.tokenExpiresAt === null) return
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null
      this.forceNewToken = true
      void this.refreshToken()
    }, refreshDelay(this.tokenExpiresAt, Date.now()))
  }

  private async refreshToken(): Promise<void> {
    if (!this.options.getToken || this.currentState !== 'connected') return
    const gen = this.generation
    let token: string | null
    try {
      token = await this.authToken()
    } catch (err) {
      this.events.emit('error', { code: 1001, message: `getToken failed: ${String(err)}` })
      return
    }
    if (gen !== this.generation || !token) return
    this.request({ type: 'refresh', token }).then(
      () => this.scheduleRefresh(),
      (err: RealtimeError) => this.events.emit('error', err),
    )
  }

  // ----------------------------------------------------------------- delivery

  private sendSubscribe(name: string, ch: ChannelState): void {
    const id = this.nextId++
    const since = ch.position.cursor
    ch.pendingId = id
    ch.sentSince = since
    const frame: Frame = { type: 'subscribe', id, channel: name }
    if (since) frame.since = since
    this.send(frame)
  }

  private deliver(ch: ChannelState, channel: string, m: PollAnswer['messages'][number]): void {
    if (!ch.position.accept(m.cursor)) return
    const meta: MessageMeta = { channel, offset: Number(m.offset), cursor: m.cursor, ts: Number(m.ts) }
    for (const h of [...ch.handlers]) {
      try {
        h.fn(m.data, meta)
      } catch (err) {
        reportListenerError(err)
      }
    }
  }

  /** Hands a notification to the app once; false when it was delivered before. */
  private deliverNotification(m: PollAnswer['messages'][number]): boolean {
    if (!this.inbox.accept(m.cursor)) return false
    const meta: NotificationMeta = { offset: Number(m.offset), cursor: m.cursor, ts: Number(m.ts) }
    for (const h of [...this.notificationHandlers]) {
      try {
        h.fn(m.data, meta)
      } catch (err) {
        reportListenerError(err)
      }
    }
    return true
  }

  /** Hands a polling answer for `channel` (null: the inbox) to the app through the shared positions. */
  protected deliverPolled(channel: string | null, since: string | null, answer: PollAnswer): void {
    const position = channel === null ? this.inbox : this.channels.get(channel)?.position
    if (!position) return
    if (since && answer.recovered === false) {
      this.events.emit('gap', { channel, since, cursor: answer.cursor })
    }
    for (const m of answer.messages ?? []) {
      if (channel === null) this.deliverNotification(m)
      else {
        const ch = this.channels.get(channel)
        if (!ch) return
        this.deliver(ch, channel, m)
      }
    }
    if (typeof answer.cursor === 'string') {
      position.advanceTo(answer.cursor)
      // Set after the page is delivered, so a handler reading the count sees the old one.
      if (channel === null) this.unreadFromServer(answer.unread, answer.cursor)
    }
  }

  /** Where polling resumes a stream: its cursor, or the time the app subscribed. */
  protected pollSince(channel: string | null): string | null {
    if (channel === null) return this.inbox.cursor ?? String(this.startedAt)
    const ch = this.channels.get(channel)
    if (!ch || ch.failed) return null
    return ch.position.cursor ?? String(ch.since)
  }

  /** True when a polled stream still exists and has a cursor (so a `recovered:false` is a real gap). */
  protected hasCursor(channel: string | null): boolean {
    return (channel === null ? this.inbox : this.channels.get(channel)?.position)?.cursor != null
  }

  // ---------------------------------------------------------------- plumbing

  private request(frame: Frame): Promise<Frame> {
    const id = this.nextId++
    return new Promise<Frame>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      if (!this.send({ ...frame, id })) {
        this.pending.delete(id)
        reject({ code: 1010, message: 'not connected' } satisfies RealtimeError)
      }
    })
  }

  private settle(id: number, frame: Frame | null, err?: RealtimeError): void {
    const p = this.pending.get(id)
    if (!p) return
    this.pending.delete(id)
    if (err || !frame) p.reject(err ?? { code: 1011, message: 'no reply' })
    else p.resolve(frame)
  }

  private send(frame: Frame): boolean {
    const sock = this.socket
    if (!sock || sock.readyState !== OPEN) return false
    try {
      sock.send(JSON.stringify(frame))
      return true
    } catch {
      return false
    }
  }

  protected setState(next: ConnectionState): void {
    if (next === this.currentState) return
    this.log(`state ${this.currentState} -> ${next}`)
    const before = this.isReceiving
    // A new fallback has answered nothing yet.
    if (next === 'polling') this.pollsAnswered = false
    this.currentState = next
    this.events.emit('state', next)
    if (this.isReceiving !== before) this.events.emit('receiving', this.isReceiving)
  }

  protected emitError(err: RealtimeError): void {
    this.events.emit('error', err)
  }

  private clearTimer(name: 'reconnectTimer' | 'heartbeatTimer' | 'connectTimer' | 'refreshTimer'): void {
    const t = this[name]
    if (t !== null) clearTimeout(t)
    this[name] = null
  }

  /** True while `connect()` is in force (not after `disconnect()` or a final close). */
  protected get active(): boolean {
    return this.wanted
  }

  /** Stops reconnecting and polling but keeps subscriptions; `resumeSession` undoes it. */
  protected pauseSession(): void {
    this.wanted = false
    this.clearTimer('reconnectTimer')
    this.dropSocket(1000, 'paused')
    this.stopFallback()
    this.setState('disconnected')
  }

  /** Reconnects at once after `pauseSession`, resuming from the cursors. */
  protected resumeSession(): void {
    if (this.wanted) return this.reconnectNow()
    this.wanted = true
    this.failures = 0
    this.setState('reconnecting')
    void this.open()
  }

  // ---------------------------------------------- hooks for the polling fallback

  /** After each failed or lost socket, with the count of failures in a row. */
  protected onSocketFailed(_failures: number): void {}
  /** When no WebSocket can be created at all. */
  protected onSocketUnavailable(): void {}
  protected onChannelAdded(_channel: string): void {}
  protected onChannelRemoved(_channel: string): void {}
  protected onChannelFailed(_channel: string): void {}
  /** Stop polling (called on connect and on disconnect). */
  protected stopFallback(): void {}
}

/** Resolves the `debug` option, falling back to `DEBUG=herald:*` on Node. */
function debugLogger(option: boolean | DebugLogger | undefined): DebugLogger {
  if (typeof option === 'function') return option
  const fromEnv = (): boolean => {
    // `process` is absent in browsers and React Native may stub it: look, don't assume.
    const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env
    const value = env?.DEBUG ?? ''
    return value.split(/[\s,]+/).some((p) => p === '*' || p === 'herald:*' || p === 'herald')
  }
  if (option === true || (option === undefined && fromEnv())) {
    return (message, detail) => {
      if (detail === undefined) console.debug(`[herald] ${message}`)
      else console.debug(`[herald] ${message}`, detail)
    }
  }
  return () => {}
}
