/**
 * Public types shared by every entry point: options, states, message metadata,
 * and the small structural interfaces (WebSocket, fetch) the SDK needs from its
 * host so that it runs unchanged in browsers, React Native and Node.
 */

/** Connection state, as reported by `client.state` and the `state` event. */
export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'polling'

/** Where a channel message came from, handed to `subscribe` handlers. */
export interface MessageMeta {
  channel: string
  offset: number
  cursor: string
  ts: number
}

/** Where a notification came from, handed to `onNotification` handlers. */
export interface NotificationMeta {
  offset: number
  cursor: string
  ts: number
}

export type MessageHandler<T = unknown> = (data: T, meta: MessageMeta) => void

/** One client in a channel's presence (namespaces with `presence` or `join_leave`). */
export interface PresenceEntry {
  /** The connection's id, as the server told it in `connected`. */
  client: string
  /** The user id; `""` for an anonymous client. */
  user: string
  /** The token's `info` claim, or null. */
  info: Record<string, unknown> | null
}

/** Who is in a channel: at most 1000 entries listed; `users` and `total` are exact. */
export interface PresenceInfo {
  clients: PresenceEntry[]
  /** Distinct users (anonymous clients not counted). */
  users: number
  /** Clients subscribed. */
  total: number
}

/** How many clients and users are in a channel. */
export interface PresenceStats {
  clients: number
  users: number
}

/** A `join` or `leave` of another client (namespaces with `join_leave`). */
export type PresenceHandler = (entry: PresenceEntry, channel: string) => void

/** Options of `subscribe`: presence events of the channel (namespaces with `join_leave`). */
export interface SubscribeOptions {
  /** Another client subscribed to the channel. */
  onJoin?: PresenceHandler
  /** Another client left it (unsubscribed, disconnected, or its node died). */
  onLeave?: PresenceHandler
}
export type NotificationHandler<T = unknown> = (data: T, meta: NotificationMeta) => void

/**
 * A gap the server could not fill (`recovered: false`): history expired, was
 * trimmed, or the channel's epoch changed. The app should refetch its state.
 * `channel` is null for the notification inbox.
 */
export interface GapInfo {
  channel: string | null
  /** The cursor the SDK asked to resume from. */
  since: string
  /** Where the stream continues now. */
  cursor: string
}

/** An error the server reported, or a close that ends the connection for good. */
export interface RealtimeError {
  code: number
  message: string
  channel?: string
}

/**
 * An event handler slot, checked bivariantly (as a method's parameter is):
 * the browser's, React Native's and `ws`'s WebSocket classes each type their
 * handlers with their own event classes, and under `strict` a plain function
 * type would refuse all three.
 */
export type EventSlot<E> = { bivarianceHack(ev: E): void }['bivarianceHack'] | null

/** The subset of the WHATWG WebSocket the SDK uses (browser, React Native, `ws`). */
export interface WebSocketLike {
  readonly readyState: number
  onopen: EventSlot<unknown>
  onmessage: EventSlot<{ data?: unknown }>
  onclose: EventSlot<{ code?: number; reason?: string }>
  onerror: EventSlot<unknown>
  send(data: string): void
  close(code?: number, reason?: string): void
}

export type WebSocketConstructor = new (url: string) => WebSocketLike

export type FetchLike = (
  input: string,
  init?: { method?: string; headers?: Record<string, string>; signal?: AbortSignal; body?: string },
) => Promise<{ status: number; ok: boolean; headers: { get(name: string): string | null }; json(): Promise<unknown> }>

/** Options common to every entry point (README, "Options"). */
export interface RealtimeOptions {
  /** The `ws://host/ws` (or `wss://`) URL. */
  url: string
  /** The server's HTTP origin for polling; default derived from `url`. */
  apiUrl?: string
  /** A JWT. Use `getToken` instead when tokens expire. */
  token?: string | null
  /** Returns a fresh JWT; called before each connect when needed, before `exp`, and after 4005. */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined
  /** Dev mode only: the user whose notifications to receive without a token. */
  user?: string
  /**
   * Sent as the `connect` frame's `data`: with no token, a server with
   * `proxy.connect_url` hands it (with the upgrade's cookie, origin and
   * user-agent) to your backend, which says who the user is
   * (README.md, "Options").
   */
  connectData?: unknown
  /** A WebSocket constructor; default `globalThis.WebSocket`. */
  webSocket?: WebSocketConstructor
  /** A fetch function for polling; default `globalThis.fetch`. */
  fetch?: FetchLike
  /** Smallest reconnect delay in ms (default 500). */
  minReconnectDelay?: number
  /** Largest reconnect delay in ms (default 20000). */
  maxReconnectDelay?: number
  /** Socket failures in a row before polling starts (default 3; RealtimeService only). */
  fallbackAfter?: number
  /** Polling period in ms when the server does not hold long polls (default 30000). */
  pollInterval?: number
  /** Seconds the server may hold a long poll (`wait`, default 25; 0 disables long polling). */
  longPollWait?: number
  /**
   * Streams (channels + inbox) that may hold a long poll at once (default 4).
   * Browsers open about 6 HTTP/1.1 connections per origin; with more streams
   * than this, every stream polls every `pollInterval` instead.
   */
  maxLongPolls?: number
  /**
   * Least time in ms between the starts of two polls of one stream (default
   * 1000). A busy channel's long poll returns at every message; waiting this
   * long before the next gathers what arrives meanwhile into one page, so a
   * channel at 10 messages/s costs about one request per second, well under
   * the server's poll rate limit (`limits.poll_requests_per_second`, 20 by
   * default) even with many streams.
   */
  minPollGap?: number
  /** The jitter source, a function returning [0, 1) (default Math.random). */
  random?: () => number
  /** Ms to wait for `connected` after opening a socket before giving up on it (default 10000). */
  connectTimeout?: number
  /**
   * Logs state changes, reconnects, fallbacks and resumes: `true` for
   * `console.debug`, or a function of your own. On Node, `DEBUG=herald:*`
   * (or `DEBUG=*`) in the environment turns it on too.
   */
  debug?: boolean | DebugLogger
}

/** Receives the SDK's debug lines (see {@link RealtimeOptions.debug}). */
export type DebugLogger = (message: string, detail?: Record<string, unknown>) => void
