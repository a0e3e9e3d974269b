// @vitest-environment jsdom
/** Presence (SPEC §11) in the SDK and `usePresence`, against a real Herald process. */
import { act, cleanup, render, screen } from '@testing-library/react'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeClient } from '../src/client.js'
import { RealtimeService } from '../src/service.js'
import { usePresence, type PresenceService } from '../src/react.js'
import type { PresenceEntry, RealtimeOptions, WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { startProxy } from './helpers/proxy.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor
const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, webSocket: WS } satisfies Partial<RealtimeOptions>

let server: Herald
const clients: RealtimeClient[] = []
function client(user: string): RealtimeClient {
  const c = new RealtimeClient({ url: server.wsUrl, ...fast, token: makeToken(user, 3600, { info: { name: user } }) })
  clients.push(c)
  return c
}
function subscribed(c: RealtimeClient, channel: string): Promise<void> {
  return new Promise((resolve) => {
    const off = c.on('subscribed', (s) => {
      if (s.channel === channel) {
        off()
        resolve()
      }
    })
  })
}

beforeAll(async () => {
  server = await startHerald({
    extra: `
[[namespaces]]
name = "room"
subscribe = "public"
join_leave = true
`,
  })
})
afterEach(() => {
  cleanup()
  for (const c of clients.splice(0)) c.disconnect()
})
afterAll(async () => {
  await server?.stop()
})

describe('presence', () => {
  it('reads who is in a channel and hears the others join and leave, never itself', async () => {
    const ann = client('ann')
    const joins: PresenceEntry[] = []
    const leaves: PresenceEntry[] = []
    const annLive = subscribed(ann, 'room:1')
    ann.subscribe('room:1', () => {}, { onJoin: (e) => joins.push(e), onLeave: (e) => leaves.push(e) })
    ann.connect()
    await annLive

    const bob = client('bob')
    const bobJoins: PresenceEntry[] = []
    const bobLive = subscribed(bob, 'room:1')
    bob.subscribe('room:1', () => {}, { onJoin: (e) => bobJoins.push(e) })
    bob.connect()
    await bobLive

    await waitFor(() => joins.length === 1, 'bob joining')
    expect(joins[0]).toMatchObject({ user: 'bob', info: { name: 'bob' } })
    const p = await ann.presence('room:1')
    expect(p.total).toBe(2)
    expect(p.users).toBe(2)
    expect(p.clients.map((c) => c.user).sort()).toEqual(['ann', 'bob'])
    expect(await bob.presenceStats('room:1')).toEqual({ clients: 2, users: 2 })
    expect(bobJoins).toEqual([])

    bob.disconnect()
    await waitFor(() => leaves.length === 1, 'bob leaving')
    expect(leaves[0]!.client).toBe(joins[0]!.client)
    expect((await ann.presence('room:1')).total).toBe(1)
  })

  it('rejects with 1012 where the namespace keeps no presence, and 1010 before connecting', async () => {
    const ann = client('ann')
    await expect(ann.presence('pub:1')).rejects.toMatchObject({ code: 1010 })
    const live = subscribed(ann, 'pub:1')
    ann.subscribe('pub:1', () => {})
    ann.connect()
    await live
    await expect(ann.presence('pub:1')).rejects.toMatchObject({ code: 1012 })
    await expect(ann.presenceStats('pub:1')).rejects.toMatchObject({ code: 1012 })
  })

  it('RealtimeService reads presence over HTTP while polling', async () => {
    const proxy = await startProxy(server.origin)
    try {
      const ann = client('ann')
      const live = subscribed(ann, 'room:http')
      ann.subscribe('room:http', () => {})
      ann.connect()
      await live
      proxy.blockUpgrades(true)
      const bob = new RealtimeService({ url: proxy.wsUrl, ...fast, fallbackAfter: 1, token: makeToken('bob') })
      clients.push(bob)
      bob.subscribe('room:http', () => {})
      bob.connect()
      await waitFor(() => bob.state === 'polling', 'bob polling')
      const p = await bob.presence('room:http')
      expect(p.total).toBe(1)
      expect(p.clients.map((c) => c.user)).toEqual(['ann'])
      expect(await bob.presenceStats('room:http')).toEqual({ clients: 1, users: 1 })
      await expect(bob.presence('pub:1')).rejects.toMatchObject({ code: 1012 })
    } finally {
      await proxy.close()
    }
  })

  it('usePresence stays live with joins and leaves', async () => {
    const ann = client('ann')
    ann.connect()
    function Room() {
      const { clients: who, users, total } = usePresence(ann as PresenceService, 'room:2')
      return (
        <div data-testid="room">
          {total}/{users}: {who.map((c) => c.user).sort().join(',')}
        </div>
      )
    }
    render(<Room />)
    await waitFor(() => screen.getByTestId('room').textContent === '1/1: ann', 'ann alone')
    const bob = client('bob')
    const bobLive = subscribed(bob, 'room:2')
    bob.subscribe('room:2', () => {})
    bob.connect()
    await bobLive
    await waitFor(() => screen.getByTestId('room').textContent === '2/2: ann,bob', 'bob in the room')
    await act(async () => {
      bob.disconnect()
    })
    await waitFor(() => screen.getByTestId('room').textContent === '1/1: ann', 'bob gone')
  })

  it('usePresence reads again after a reconnect: joins missed meanwhile are not replayed', async () => {
    const proxy = await startProxy(server.origin)
    try {
      const ann = new RealtimeClient({ url: proxy.wsUrl, ...fast, token: makeToken('ann') })
      clients.push(ann)
      ann.connect()
      function Room() {
        const { total, clients: who } = usePresence(ann as PresenceService, 'room:3')
        return <div data-testid="room3">{`${total}: ${who.map((c) => c.user).sort().join(',')}`}</div>
      }
      render(<Room />)
      await waitFor(() => screen.getByTestId('room3').textContent === '1: ann', 'ann alone')
      // Ann's socket is cut and refused for a while; Carl joins meanwhile.
      proxy.blockUpgrades(true)
      proxy.dropSockets()
      await waitFor(() => ann.state !== 'connected', 'ann cut off')
      const carl = client('carl')
      const carlLive = subscribed(carl, 'room:3')
      carl.subscribe('room:3', () => {})
      carl.connect()
      await carlLive
      proxy.blockUpgrades(false)
      await waitFor(() => screen.getByTestId('room3').textContent === '2: ann,carl', 'carl seen after the reconnect')
    } finally {
      await proxy.close()
    }
  })
})
