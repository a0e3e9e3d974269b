// POST /api/herald/webhooks: Herald's signed webhooks (docs/backend-hooks.md).
// The raw body is what is signed: read it with req.text(), never req.json().
import { verifyWebhook, WebhookVerificationError, type WebhookEvent } from 'herald-realtime/server'

export const runtime = 'nodejs'
export const dynamic = 'force-dynamic'

// Delivery is at least once: a real app records ids in its database.
const seen = new Set<string>()

export async function POST(req: Request) {
  const secret = process.env.HERALD_WEBHOOK_SECRET
  if (!secret) return new Response('HERALD_WEBHOOK_SECRET is not set', { status: 500 })
  const body = await req.text()
  let event: WebhookEvent
  try {
    event = verifyWebhook(body, req.headers.get('herald-signature'), secret)
  } catch (err) {
    if (err instanceof WebhookVerificationError) return Response.json({ error: err.reason }, { status: 400 })
    throw err
  }
  if (seen.has(event.id)) return Response.json({ duplicate: event.id })
  seen.add(event.id)
  // e.g. notification_undelivered → a mobile push; user_offline → last seen.
  return Response.json({ received: event.event, data: event.data })
}
