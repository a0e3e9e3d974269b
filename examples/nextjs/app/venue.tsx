'use client'
// The seed's VenueManagement component, with only the import path changed.
import { useState } from 'react'
import { useRealtime, useVenueUpdates } from 'herald-realtime/react'

const getToken = () => fetch('/api/herald-token').then((r) => r.text())

export function VenueManagement({ venueId, wsUrl }: { venueId: string; wsUrl: string }) {
  const { service, isConnected, state } = useRealtime(wsUrl, { getToken })
  const [updates, setUpdates] = useState<string[]>([])
  useVenueUpdates(
    service,
    (update: unknown) => setUpdates((u) => [JSON.stringify(update), ...u].slice(0, 20)),
    venueId,
  )
  return (
    <section>
      <p id="status">Status: {isConnected ? 'Connected' : state}</p>
      <ul id="updates">
        {updates.map((u, i) => (
          <li key={i}>{u}</li>
        ))}
      </ul>
    </section>
  )
}
