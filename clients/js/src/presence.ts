/**
 * Presence snapshots kept live by `join` / `leave` (used by `usePresence`
 * and the demo page; free of React).
 */
import type { PresenceEntry, PresenceInfo } from './types.js'

/**
 * Applies a `join` or `leave` to a presence snapshot. Counts stay exact while
 * the list is complete (at most 1000 entries); past that, `users` may drift
 * until the next read.
 */
export function applyPresenceEvent(s: PresenceInfo, kind: 'join' | 'leave', entry: PresenceEntry): PresenceInfo {
  const listed = s.clients.some((c) => c.client === entry.client)
  if (kind === 'join') {
    if (listed) return s
    const known = entry.user === '' || s.clients.some((c) => c.user === entry.user)
    return { clients: [...s.clients, entry], users: s.users + (known ? 0 : 1), total: s.total + 1 }
  }
  // Not listed in a complete list: it was never counted.
  if (!listed && s.clients.length >= s.total) return s
  const clients = s.clients.filter((c) => c.client !== entry.client)
  const stays = entry.user === '' || clients.some((c) => c.user === entry.user)
  return { clients, users: Math.max(0, s.users - (stays ? 0 : 1)), total: Math.max(0, s.total - 1) }
}
