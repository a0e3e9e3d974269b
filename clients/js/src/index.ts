/**
 * herald-realtime: the TypeScript client for Herald (the package's README.md).
 * `RealtimeClient` is the WebSocket client; `RealtimeService` adds the polling fallback.
 */
export { RealtimeClient, type ClientEvents, type PollAnswer } from './client.js'
export { RealtimeService } from './service.js'
export { MobileRealtimeService, type AppStateLike, type NetworkLike, type MobileRealtimeOptions } from './mobile.js'
export { backoffDelay } from './backoff.js'
export { applyPresenceEvent } from './presence.js'
export { parseCursor, formatCursor, type Cursor } from './cursor.js'
export type * from './types.js'
