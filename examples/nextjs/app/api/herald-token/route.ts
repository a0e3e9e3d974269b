// GET /api/herald-token: a client token for the signed-in user (the page's
// getToken). A real app takes the user from its session (NextAuth, …).
import { getRealtimeServer } from '../../../lib/herald'

export const dynamic = 'force-dynamic'

export async function GET() {
  const token = await getRealtimeServer().createToken('demo-user', { ttl: 3600 })
  return new Response(token, { headers: { 'content-type': 'text/plain', 'cache-control': 'no-store' } })
}
