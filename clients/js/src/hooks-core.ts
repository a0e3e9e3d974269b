/**
 * The hooks shared by the web and React Native entry points. They subscribe in
 * an effect keyed on (service, channel) only; the handler is read through a
 * ref, so a new callback identity on every render never resubscribes, and the
 * effect's cleanup unsubscribes on unmount or when the channel changes.
 */
import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type Context,
} from 'react'
import type { RealtimeClient } from './client.js'
import { applyPresenceEvent } from './presence.js'
import type { ConnectionState, MessageHandler, NotificationHandler, PresenceEntry, PresenceInfo } from './types.js'

/** Anything with the client's surface: RealtimeClient, RealtimeService, MobileRealtimeService. */
export type AnyService = Pick<RealtimeClient, 'subscribe' | 'onNotification' | 'on' | 'state' | 'isReceiving'>

/**
 * The service `useRealtime` returns instead of creating one (set by
 * herald-realtime/testing's MockRealtimeProvider). Kept under a global
 * symbol, not in module state, so the ESM and CommonJS builds of the package
 * share it: a test that requires one and an app that imports the other still
 * meet.
 */
export function realtimeOverride(): Context<unknown> {
  const key = Symbol.for('herald-realtime.override')
  const g = globalThis as unknown as Record<symbol, Context<unknown> | undefined>
  return (g[key] ??= createContext<unknown>(null))
}

/** The service a MockRealtimeProvider above supplies, if any. */
export function useOverride<S>(): S | null {
  return useContext(realtimeOverride()) as S | null
}

function useLatest<T>(value: T): { readonly current: T } {
  const ref = useRef(value)
  // Updated during render so a message arriving before the next effect uses the newest handler.
  ref.current = value
  return ref
}

/** Subscribes `onMessage` to `channel` while mounted; a null channel or service subscribes nothing. */
export function useChannel<T = unknown>(
  service: AnyService | null | undefined,
  channel: string | null | undefined,
  onMessage: MessageHandler<T>,
): void {
  const handler = useLatest(onMessage)
  useEffect(() => {
    if (!service || !channel) return
    return service.subscribe<T>(channel, (data, meta) => handler.current(data, meta))
  }, [service, channel, handler])
}

/** `venue:{venueId}` when a venue is given, else every venue's changes on `venue_updates`. */
export function useVenueUpdates<T = unknown>(
  service: AnyService | null | undefined,
  onUpdate: MessageHandler<T>,
  venueId?: string | number | null,
): void {
  useChannel(service, venueId != null && venueId !== '' ? `venue:${venueId}` : 'venue_updates', onUpdate)
}

/** New vibe checks at a venue (`vibe_checks:{venueId}`). */
export function useVibeChecks<T = unknown>(
  service: AnyService | null | undefined,
  venueId: string | number | null | undefined,
  onVibeCheck: MessageHandler<T>,
): void {
  useChannel(service, venueId != null && venueId !== '' ? `vibe_checks:${venueId}` : null, onVibeCheck)
}

/** Promotions at a venue (`promotions:{venueId}`). */
export function usePromotions<T = unknown>(
  service: AnyService | null | undefined,
  venueId: string | number | null | undefined,
  onPromotion: MessageHandler<T>,
): void {
  useChannel(service, venueId != null && venueId !== '' ? `promotions:${venueId}` : null, onPromotion)
}

/** The connected user's notifications while mounted. */
export function useNotifications<T = unknown>(
  service: AnyService | null | undefined,
  onNotification: NotificationHandler<T>,
): void {
  const handler = useLatest(onNotification)
  useEffect(() => {
    if (!service) return
    return service.onNotification<T>((data, meta) => handler.current(data, meta))
  }, [service, handler])
}

/** A service that can also read presence (RealtimeClient, RealtimeService, MobileRealtimeService). */
export type PresenceService = AnyService & Pick<RealtimeClient, 'presence'>

export { applyPresenceEvent }

const NOBODY: PresenceInfo = { clients: [], users: 0, total: 0 }

/**
 * Who is in `channel` while mounted: `{ clients, users, total }`. Subscribes
 * to the channel (so this client is present too), reads `presence` once the
 * subscription is live — again after every reconnect, since joins and leaves
 * missed meanwhile are not replayed — and applies `join` / `leave` as they
 * come (namespaces with `join_leave`; with `presence` only, the snapshot is
 * refreshed at each (re)subscription). Empty while not connected.
 */
export function usePresence(service: PresenceService | null | undefined, channel: string | null | undefined): PresenceInfo {
  const [presence, setPresence] = useState<PresenceInfo>(NOBODY)
  useEffect(() => {
    setPresence(NOBODY)
    if (!service || !channel) return
    let live = true
    let reads = 0
    const read = (): void => {
      const n = ++reads
      service.presence(channel).then(
        (p) => {
          if (live && n === reads) setPresence(p)
        },
        // Not connected, or presence off here (1012): the next subscription reads again.
        () => {},
      )
    }
    const apply = (kind: 'join' | 'leave') => (entry: PresenceEntry) => {
      if (live) setPresence((s) => applyPresenceEvent(s, kind, entry))
    }
    const unsubscribe = service.subscribe(channel, () => {}, { onJoin: apply('join'), onLeave: apply('leave') })
    const offSubscribed = service.on('subscribed', (s) => {
      if (s.channel === channel) read()
    })
    if (service.state === 'connected') read()
    return () => {
      live = false
      offSubscribed()
      unsubscribe()
    }
  }, [service, channel])
  return presence
}

/** A service that keeps the unread count (RealtimeClient, RealtimeService, MobileRealtimeService). */
export type UnreadService = AnyService &
  Pick<RealtimeClient, 'unreadCount' | 'notificationsCursor' | 'markNotificationsRead'>

/** What {@link useUnreadNotifications} returns. */
export interface UnreadNotifications {
  /** The user's unread notifications (0 until the server first tells). */
  unread: number
  /**
   * Marks notifications read up to and including `cursor` (a notification's
   * `meta.cursor`); with no argument, everything up to the newest
   * notification the service knows of. Resolves with the new unread count.
   * The promise is marked handled: an unawaited failure (offline, say) is
   * no unhandled rejection; await it to see failures.
   */
  markRead(cursor?: string): Promise<number>
}

/**
 * The user's unread notification count, re-rendering on change, and
 * `markRead`. The count comes from the server at every (re)connect — so an
 * app back from the background shows the right badge before anything new
 * arrives — and from every inbox poll and read; live notifications add one
 * each (replays after a resume do not: they are in the server's count).
 */
export function useUnreadNotifications(service: UnreadService | null | undefined): UnreadNotifications {
  const subscribe = useCallback(
    (onChange: () => void) => (service ? service.on('unread', onChange) : () => {}),
    [service],
  )
  const get = () => service?.unreadCount ?? 0
  const unread = useSyncExternalStore(subscribe, get, get)
  const markRead = useCallback(
    (cursor?: string): Promise<number> => {
      let p: Promise<number>
      if (!service) p = Promise.reject({ code: 1010, message: 'no service' })
      else {
        const upTo = cursor ?? service.notificationsCursor
        // Nothing known to mark: the count stands.
        p = upTo ? service.markNotificationsRead(upTo) : Promise.resolve(service.unreadCount)
      }
      p.catch(() => {})
      return p
    },
    [service],
  )
  return { unread, markRead }
}

/** The service's connection state, re-rendering on change. */
export function useConnectionState(service: AnyService | null | undefined): ConnectionState {
  const subscribe = useCallback(
    (onChange: () => void) => (service ? service.on('state', onChange) : () => {}),
    [service],
  )
  const get = () => service?.state ?? 'disconnected'
  return useSyncExternalStore(subscribe, get, get)
}

/**
 * Whether updates are actually arriving (connected, or polling with answered
 * polls): `state` alone shows `polling` while every poll fails.
 */
export function useIsReceiving(service: AnyService | null | undefined): boolean {
  const subscribe = useCallback(
    (onChange: () => void) => {
      if (!service) return () => {}
      const offs = [service.on('state', onChange), service.on('receiving', onChange)]
      return () => offs.forEach((off) => off())
    },
    [service],
  )
  const get = () => service?.isReceiving ?? false
  return useSyncExternalStore(subscribe, get, get)
}

/**
 * Keeps one service for the lifetime of `key`: created on first render,
 * connected while mounted, disconnected on unmount or when `key` changes.
 */
export function useServiceLifecycle<S extends { connect(): void; disconnect(): void }>(
  key: string,
  create: () => S,
): S {
  const ref = useRef<{ key: string; service: S } | null>(null)
  if (!ref.current || ref.current.key !== key) ref.current = { key, service: create() }
  const service = ref.current.service
  useEffect(() => {
    service.connect()
    return () => service.disconnect()
  }, [service])
  return service
}
