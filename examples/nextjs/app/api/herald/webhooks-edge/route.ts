// The same receiver on the edge runtime (Next 16 deprecates it, but Workers,
// Deno and Vercel Edge are alike): no node:crypto there, so verifyWebhookAsync (Web Crypto).
import { verifyWebhookAsync, WebhookVerificationError } from 'herald-realtime/server'

export const runtime = 'edge'
export const dynamic = 'force-dynamic'

export async function POST(req: Request) {
  const secret = process.env.HERALD_WEBHOOK_SECRET
  if (!secret) return new Response('HERALD_WEBHOOK_SECRET is not set', { status: 500 })
  const body = await req.text()
  try {
    const event = await verifyWebhookAsync(body, req.headers.get('herald-signature'), secret)
    return Response.json({ received: event.event, data: event.data })
  } catch (err) {
    if (err instanceof WebhookVerificationError) return Response.json({ error: err.reason }, { status: 400 })
    throw err
  }
}
