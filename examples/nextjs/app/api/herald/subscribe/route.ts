// POST /api/herald/subscribe: Herald's subscribe proxy (docs/backend-hooks.md)
// for namespaces with subscribe = "proxy". Only staff of venue N may see
// promotions:N; a real app asks its database.
import { timingSafeEqual } from 'node:crypto'

export const runtime = 'nodejs'
export const dynamic = 'force-dynamic'

interface SubscribeRequest {
  user: string
  client: string | null
  channel: string
  transport: 'websocket' | 'polling'
}

const STAFF: Record<string, number[]> = { 'demo-user': [42] }

/** `Authorization: Bearer <proxy.secret>`, compared in constant time. */
function fromHerald(req: Request): boolean {
  const secret = process.env.HERALD_PROXY_SECRET
  if (!secret) return false
  const given = Buffer.from(req.headers.get('authorization') ?? '')
  const expected = Buffer.from(`Bearer ${secret}`)
  return given.length === expected.length && timingSafeEqual(given, expected)
}

export async function POST(req: Request) {
  if (!fromHerald(req)) return new Response('unauthorized', { status: 401 })
  const { user, channel } = (await req.json()) as SubscribeRequest
  const promotions = /^promotions:(\d+)$/.exec(channel)
  if (user && promotions && STAFF[user]?.includes(Number(promotions[1]))) {
    return Response.json({ allow: true, ttl_s: 300 })
  }
  return Response.json({ allow: false })
}
