// The seed's `getRealtimeServer()`, backed by Herald: one place that knows
// where Herald is and how to reach it (server-side only: the API key and the
// HMAC secret never reach the browser).
import { getRealtimeServer as connect, type RealtimeServer } from 'herald-realtime/server'

let server: RealtimeServer | null = null

export function getRealtimeServer(): RealtimeServer {
  server ??= connect({
    url: process.env.HERALD_URL ?? 'http://localhost:8080',
    apiKey: process.env.HERALD_API_KEY ?? '',
    hmacSecret: process.env.HERALD_HMAC_SECRET,
  })
  return server
}
