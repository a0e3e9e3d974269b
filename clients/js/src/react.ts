/**
 * herald-realtime/react: React hooks for the web (README, "Web (React)"), with the seed
 * application's signatures: `useRealtime(url, userIdOrOptions)` →
 * `{service, isConnected, state}`, and the channel hooks.
 */
import { useRef } from 'react'
import { RealtimeService } from './service.js'
import { useConnectionState, useIsReceiving, useOverride, useServiceLifecycle } from './hooks-core.js'
import type { ConnectionState, RealtimeOptions } from './types.js'

export {
  useChannel,
  useVenueUpdates,
  useVibeChecks,
  usePromotions,
  useNotifications,
  useConnectionState,
  useIsReceiving,
  usePresence,
  useUnreadNotifications,
  applyPresenceEvent,
  type AnyService,
  type PresenceService,
  type UnreadService,
  type UnreadNotifications,
} from './hooks-core.js'

/** Options for `useRealtime`: every RealtimeOptions field except `url`. */
export type UseRealtimeOptions = Omit<RealtimeOptions, 'url'>

export interface UseRealtimeResult<S> {
  service: S
  isConnected: boolean
  state: ConnectionState
  /** Updates are arriving: connected, or polling with answered polls (false while every poll fails). */
  isReceiving: boolean
}

/** A stable identity for the options that require a new service when they change. */
function serviceKey(url: string, o: UseRealtimeOptions): string {
  return JSON.stringify([url, o.apiUrl ?? '', o.user ?? '', o.token ?? '', Boolean(o.getToken)])
}

/**
 * Normalises the seed's `userId` string to options: a bare user id is the
 * dev-mode `user` (production apps pass `{ getToken }` or `{ token }`).
 */
function toOptions(userIdOrOptions: string | UseRealtimeOptions | null | undefined): UseRealtimeOptions {
  if (typeof userIdOrOptions === 'string') return { user: userIdOrOptions }
  return userIdOrOptions ?? {}
}

/**
 * Creates a RealtimeService for `url`, connects it while the component is
 * mounted, and re-renders on state changes. A new service is made only when
 * the url, apiUrl, user or token changes; `getToken` is read fresh each call.
 */
export function useRealtime(
  url: string,
  userIdOrOptions?: string | UseRealtimeOptions | null,
): UseRealtimeResult<RealtimeService> {
  const options = toOptions(userIdOrOptions)
  const latest = useRef(options)
  latest.current = options
  const override = useOverride<RealtimeService>()
  const service = useServiceLifecycle(override ? 'override' : serviceKey(url, options), () => {
    if (override) return override
    const o: RealtimeOptions = { ...options, url }
    if (options.getToken) o.getToken = () => latest.current.getToken?.()
    return new RealtimeService(o)
  })
  const state = useConnectionState(service)
  const isReceiving = useIsReceiving(service)
  return { service, isConnected: state === 'connected', state, isReceiving }
}
