/**
 * herald-realtime/testing: render components that use the SDK's hooks in
 * Jest, Vitest or React Native Testing Library without opening a socket or
 * making an HTTP request. Wrap the tree in `<MockRealtimeProvider
 * service={mock}>`: every `useRealtime` inside returns `mock` instead of
 * creating a service, and the test drives it (`mock.emit`, `mock.notify`,
 * `mock.setState`).
 *
 *   const mock = createMockRealtime({ state: 'connected' })
 *   render(<MockRealtimeProvider service={mock}><VenueScreen venueId="42" /></MockRealtimeProvider>)
 *   act(() => mock.emit('venue:42', { name: 'Blue Bar' }))
 *   expect(mock.published).toEqual([])
 */
import { createElement, type ReactNode } from 'react'
import { Emitter } from './emitter.js'
import type { ClientEvents } from './client.js'
import { realtimeOverride } from './hooks-core.js'
import type {
  ConnectionState,
  GapInfo,
  MessageHandler,
  MessageMeta,
  NotificationHandler,
  NotificationMeta,
  PresenceEntry,
  PresenceInfo,
  PresenceStats,
  SubscribeOptions,
} from './types.js'

/** A stand-in service: the client's surface, driven by the test. */
export interface MockRealtime {
  readonly state: ConnectionState
  readonly isConnected: boolean
  readonly isReceiving: boolean
  readonly isPolling: boolean
  readonly subscribedChannels: string[]
  /** Every `publish` the component made, in order. */
  readonly published: { channel: string; data: unknown }[]
  /** Unread notifications: each `notify` adds one; `markNotificationsRead` and `setUnread` set it. */
  readonly unreadCount: number
  /** The cursor of the last `notify` (`mock:<n>`), or null before any. */
  readonly notificationsCursor: string | null
  /** Every cursor `markNotificationsRead` (or `useUnreadNotifications().markRead`) was given, in order. */
  readonly markedRead: string[]
  connect(): void
  disconnect(): void
  reconnectNow(): void
  subscribe<T = unknown>(channel: string, onMessage: MessageHandler<T>, options?: SubscribeOptions): () => void
  onNotification<T = unknown>(fn: NotificationHandler<T>): () => void
  onGap(fn: (gap: GapInfo) => void): () => void
  on<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): () => void
  getConnectionState(): ConnectionState
  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number }>
  /** Who is in `channel`: the entries `join` added and `leave` did not remove. */
  presence(channel: string): Promise<PresenceInfo>
  presenceStats(channel: string): Promise<PresenceStats>
  /** Marks the mock's notifications read up to `cursor`; resolves with what is left unread. */
  markNotificationsRead(cursor: string): Promise<number>
  /** Sets the unread count (as a `connected` frame would) and emits `unread`. */
  setUnread(count: number): void
  /** Another client joins `channel`: its entry is added, `onJoin` handlers run. */
  join(channel: string, entry: PresenceEntry): void
  /** Another client leaves `channel`: its entry goes, `onLeave` handlers run. */
  leave(channel: string, entry: PresenceEntry): void
  /** Delivers `data` to the channel's subscribers, as a message at the next offset. */
  emit(channel: string, data: unknown): void
  /** Delivers a notification to `onNotification` handlers, and counts it unread. */
  notify(data: unknown): void
  /** Moves to `state` (and emits `state`, and `receiving` when that changes). */
  setState(state: ConnectionState, options?: { receiving?: boolean }): void
}

/** A mock service, `disconnected` unless told otherwise; nothing it does leaves the process. */
export function createMockRealtime(initial: { state?: ConnectionState; receiving?: boolean } = {}): MockRealtime {
  const events = new Emitter<ClientEvents>()
  const channels = new Map<string, Set<MessageHandler<any>>>()
  const inbox = new Set<NotificationHandler<any>>()
  const presenceHandlers = new Map<string, Set<SubscribeOptions>>()
  const present = new Map<string, Map<string, PresenceEntry>>()
  const snapshot = (channel: string): PresenceInfo => {
    const clients = [...(present.get(channel)?.values() ?? [])]
    return { clients, users: new Set(clients.map((c) => c.user).filter(Boolean)).size, total: clients.length }
  }
  const presenceEvent = (channel: string, kind: 'join' | 'leave', entry: PresenceEntry): void => {
    for (const h of [...(presenceHandlers.get(channel) ?? [])]) (kind === 'join' ? h.onJoin : h.onLeave)?.(entry, channel)
    events.emit('presence', { channel, kind, entry })
  }
  const offsets = new Map<string, number>()
  let inboxOffset = 0
  let state: ConnectionState = initial.state ?? 'disconnected'
  let receiving = initial.receiving ?? state === 'connected'
  const published: { channel: string; data: unknown }[] = []
  const markedRead: string[] = []
  let unread = 0
  let readUpTo = 0
  const setUnread = (n: number): void => {
    const next = Math.max(0, n)
    if (next === unread) return
    unread = next
    events.emit('unread', next)
  }

  const mock: MockRealtime = {
    get state() {
      return state
    },
    get isConnected() {
      return state === 'connected'
    },
    get isReceiving() {
      return receiving
    },
    get isPolling() {
      return state === 'polling'
    },
    get subscribedChannels() {
      return [...channels.keys()]
    },
    published,
    markedRead,
    get unreadCount() {
      return unread
    },
    get notificationsCursor() {
      return inboxOffset > 0 ? `mock:${inboxOffset}` : null
    },
    markNotificationsRead(cursor) {
      markedRead.push(cursor)
      const offset = Number(cursor.slice(cursor.lastIndexOf(':') + 1))
      if (Number.isFinite(offset)) readUpTo = Math.max(readUpTo, Math.min(offset, inboxOffset))
      setUnread(Math.min(unread, inboxOffset - readUpTo))
      return Promise.resolve(unread)
    },
    setUnread,
    // The hooks connect and disconnect the service they are given; a mock
    // stays where the test put it.
    connect() {},
    disconnect() {},
    reconnectNow() {},
    subscribe(channel, onMessage, options) {
      let handlers = channels.get(channel)
      if (!handlers) channels.set(channel, (handlers = new Set()))
      handlers.add(onMessage)
      const watcher = options ? { ...options } : null
      if (watcher) {
        let set = presenceHandlers.get(channel)
        if (!set) presenceHandlers.set(channel, (set = new Set()))
        set.add(watcher)
      }
      return () => {
        handlers.delete(onMessage)
        if (handlers.size === 0 && channels.get(channel) === handlers) channels.delete(channel)
        if (watcher) presenceHandlers.get(channel)?.delete(watcher)
      }
    },
    presence(channel) {
      return Promise.resolve(snapshot(channel))
    },
    presenceStats(channel) {
      const s = snapshot(channel)
      return Promise.resolve({ clients: s.total, users: s.users })
    },
    join(channel, entry) {
      let m = present.get(channel)
      if (!m) present.set(channel, (m = new Map()))
      m.set(entry.client, entry)
      presenceEvent(channel, 'join', entry)
    },
    leave(channel, entry) {
      present.get(channel)?.delete(entry.client)
      presenceEvent(channel, 'leave', entry)
    },
    onNotification(fn) {
      inbox.add(fn)
      return () => void inbox.delete(fn)
    },
    onGap(fn) {
      return events.on('gap', fn)
    },
    on(event, fn) {
      return events.on(event, fn)
    },
    getConnectionState() {
      return state
    },
    publish(channel, data) {
      published.push({ channel, data })
      const offset = (offsets.get(channel) ?? 0) + 1
      offsets.set(channel, offset)
      return Promise.resolve({ channel, offset })
    },
    emit(channel, data) {
      const offset = (offsets.get(channel) ?? 0) + 1
      offsets.set(channel, offset)
      const meta: MessageMeta = { channel, offset, cursor: `mock:${offset}`, ts: Date.now() }
      for (const fn of [...(channels.get(channel) ?? [])]) fn(data, meta)
    },
    notify(data) {
      inboxOffset++
      const meta: NotificationMeta = { offset: inboxOffset, cursor: `mock:${inboxOffset}`, ts: Date.now() }
      for (const fn of [...inbox]) fn(data, meta)
      setUnread(unread + 1)
    },
    setState(next, options = {}) {
      const before = receiving
      receiving = options.receiving ?? next === 'connected'
      if (next !== state) {
        state = next
        events.emit('state', next)
      }
      if (receiving !== before) events.emit('receiving', receiving)
    },
  }
  return mock
}

/** Makes every `useRealtime` below it return `service` instead of creating one. */
export function MockRealtimeProvider(props: { service: MockRealtime; children?: ReactNode }): ReactNode {
  return createElement(realtimeOverride().Provider, { value: props.service }, props.children)
}
