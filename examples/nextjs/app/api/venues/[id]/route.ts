// PUT /api/venues/{id}: the admin portal saves a venue; everyone watching it
// hears about it (the seed's "real-time venue updates").
import { getRealtimeServer } from '../../../../lib/herald'

export async function PUT(request: Request, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params
  const venue = { id, ...((await request.json()) as Record<string, unknown>) }
  // (A real app saves the venue to its database here.)
  const published = await getRealtimeServer().broadcastToChannel(`venue:${id}`, {
    type: 'venue_updated',
    venue,
    updatedAt: new Date().toISOString(),
  })
  return Response.json({ venue, offset: published.offset })
}
