import { VenueManagement } from './venue'

export default function Page() {
  return (
    <main>
      <h1>Venue 42</h1>
      <VenueManagement venueId="42" wsUrl={process.env.HERALD_WS_URL ?? 'ws://localhost:8080/ws'} />
    </main>
  )
}

// The socket URL is read at request time, so one build serves any Herald.
export const dynamic = 'force-dynamic'
