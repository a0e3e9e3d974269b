/**
 * herald-realtime/react-native rendered under Node with react-test-renderer
 * (react-native is aliased to test/shims/react-native.tsx), against a real
 * Herald process.
 */
import { create, type ReactTestRenderer } from 'react-test-renderer'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { AppState, Text } from 'react-native'
import { RealtimeDemo, useRealtime, useVenueUpdates } from '../src/react-native.js'
import type { WebSocketConstructor } from '../src/types.js'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { makeToken, PACKAGE_ROOT, startHerald, type Herald } from './helpers/herald.js'
import { waitFor } from './helpers/wait.js'

const WS = WebSocket as unknown as WebSocketConstructor
const shim = AppState as unknown as { emit(s: string): void; listenerCount(): number }

let server: Herald
let renderer: ReactTestRenderer | null = null
beforeAll(async () => {
  server = await startHerald()
})
// No act(): updates arrive from real sockets, so the tests wait for the tree instead.
afterEach(async () => {
  renderer?.unmount()
  renderer = null
  await waitFor(() => shim.listenerCount() === 0, 'unmounted services to stop listening to AppState')
})
afterAll(async () => {
  await server?.stop()
})

function texts(testID: string): string[] {
  return renderer!.root
    .findAll((n) => n.props.testID === testID && typeof n.type === 'string')
    .map((n) => [n.props.children].flat().join(''))
}

describe('herald-realtime/react-native', () => {
  it('RealtimeDemo shows the state, live channel messages and notifications', async () => {
    renderer = create(
      <RealtimeDemo
        url={server.wsUrl}
        token={makeToken('rn-1')}
        channels={['venue:40', 'pub:41']}
        options={{ webSocket: WS, backgroundGrace: 200, minReconnectDelay: 20 }}
      />,
    )
    await waitFor(() => texts('herald-state')[0] === 'State: connected', 'connected state')
    expect(texts('herald-channel')).toEqual(['venue:40', 'pub:41'])
    // Subscriptions go out right after `connected`; publish until one lands.
    await waitFor(async () => {
      await server.publish('venue:40', { name: 'Club' })
      return texts('herald-message').length > 0
    }, 'venue message', 10_000, 200)
    await server.publish('pub:41', { hello: 1 })
    await server.notify('rn-1', { title: 'hi' })
    await waitFor(() => texts('herald-message').some((t) => t.startsWith('pub:41 #1 {"hello":1}')), 'second channel')
    await waitFor(() => texts('herald-notification').length === 1, 'notification')
    expect(texts('herald-notification')[0]).toMatch(/^#\d+ \{"title":"hi"\}$/)
    expect(texts('herald-polling')).toEqual([])

    // The app goes to the background: after the grace the socket closes.
    shim.emit('background')
    await waitFor(() => texts('herald-state')[0] === 'State: disconnected', 'suspended')
    shim.emit('active')
    await waitFor(() => texts('herald-state')[0] === 'State: connected', 'resumed')
  })

  it('mobile useRealtime(wsUrl, apiUrl, options) wires AppState and unsubscribes on unmount', async () => {
    const got: unknown[] = []
    let svc: ReturnType<typeof useRealtime>['service'] | null = null
    function VenueScreen() {
      const { service, isConnected } = useRealtime(server.wsUrl, server.origin, { token: makeToken('rn-2'), webSocket: WS })
      svc = service
      useVenueUpdates(service, (u) => got.push(u), '42')
      return <Text testID="status">{isConnected ? 'Connected' : 'Disconnected'}</Text>
    }
    const listenersBefore = shim.listenerCount()
    expect(listenersBefore).toBe(0)
    renderer = create(<VenueScreen />)
    await waitFor(() => shim.listenerCount() === listenersBefore + 1, 'AppState listener')
    await waitFor(() => texts('status')[0] === 'Connected', 'connected')
    await waitFor(async () => {
      await server.publish('venue:42', { n: got.length })
      return got.length > 0
    }, 'venue update', 10_000, 200)
    renderer!.unmount()
    renderer = null
    await waitFor(() => shim.listenerCount() === listenersBefore, 'AppState listener removed')
    expect(svc!.subscribedChannels).toEqual([])
    expect(svc!.state).toBe('disconnected')
  })
})

describe('optional NetInfo', () => {
  it('useRealtime wires @react-native-community/netinfo when the app has it', async () => {
    // Installed the way an app would have it: a package in node_modules.
    const dir = join(PACKAGE_ROOT, 'node_modules', '@react-native-community', 'netinfo')
    if (existsSync(dir)) throw new Error(`${dir} exists: this test installs its own stand-in`)
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: '@react-native-community/netinfo', version: '0.0.0-test', main: 'index.js' }))
    writeFileSync(
      join(dir, 'index.js'),
      `const listeners = globalThis.__netInfoListeners = new Set()
module.exports = { default: { addEventListener(fn) { listeners.add(fn); return () => listeners.delete(fn) } } }
`,
    )
    const listeners = () => (globalThis as { __netInfoListeners?: Set<unknown> }).__netInfoListeners?.size ?? -1
    try {
      function Screen() {
        const { isConnected } = useRealtime(server.wsUrl, server.origin, { token: makeToken('rn-net'), webSocket: WS })
        return <Text testID="status">{isConnected ? 'Connected' : 'Disconnected'}</Text>
      }
      renderer = create(<Screen />)
      await waitFor(() => texts('status')[0] === 'Connected', 'connected')
      expect(listeners()).toBe(1)
      renderer.unmount()
      renderer = null
      await waitFor(() => listeners() === 0, 'the NetInfo listener removed')
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('RealtimeDemo on the polling fallback', () => {
  it('shows the polling badge while the WebSocket is blocked, keeps showing messages, and recovers', async () => {
    const { startProxy } = await import('./helpers/proxy.js')
    const proxy = await startProxy(server.origin)
    try {
      renderer = create(
        <RealtimeDemo
          url={proxy.wsUrl}
          token={makeToken('rn-3')}
          channels={['venue:43']}
          options={{ webSocket: WS, minReconnectDelay: 50, maxReconnectDelay: 300, fallbackAfter: 1, longPollWait: 5 }}
        />,
      )
      await waitFor(() => texts('herald-state')[0] === 'State: connected', 'connected state')
      proxy.blockUpgrades(true)
      proxy.dropSockets()
      await waitFor(() => texts('herald-polling')[0] === 'polling', 'polling badge')
      expect(texts('herald-state')[0]).toBe('State: polling')
      await server.publish('venue:43', { via: 'poll' })
      await server.notify('rn-3', { title: 'polled' })
      await waitFor(() => texts('herald-message').some((t) => t.includes('{"via":"poll"}')), 'polled message')
      await waitFor(() => texts('herald-notification').some((t) => t.includes('polled')), 'polled notification')
      proxy.blockUpgrades(false)
      await waitFor(() => texts('herald-state')[0] === 'State: connected', 'back on the socket', 10_000)
      expect(texts('herald-polling')).toEqual([])
      await server.publish('venue:43', { via: 'socket' })
      await waitFor(() => texts('herald-message').some((t) => t.includes('{"via":"socket"}')), 'socket message')
      // Newest first, each once.
      expect(texts('herald-message').filter((t) => t.includes('"via"'))).toEqual([
        expect.stringMatching(/^venue:43 #\d+ \{"via":"socket"\}$/),
        expect.stringMatching(/^venue:43 #\d+ \{"via":"poll"\}$/),
      ])
    } finally {
      renderer?.unmount()
      renderer = null
      await proxy.close()
    }
  })
})
