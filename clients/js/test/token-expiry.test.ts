/**
 * A token that expires and cannot be refreshed in time: the server closes with
 * 4005 about 30 s after `exp` (SPEC §4), and the client reconnects with a new
 * token from getToken and resumes from its cursors. Slow by nature (~35 s), so
 * it has a file of its own and runs beside the others.
 */
import { afterAll, beforeAll, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeClient } from '../src/client.js'
import type { WebSocketConstructor } from '../src/types.js'
import { makeToken, startHerald, type Herald } from './helpers/herald.js'
import { recordStates, waitFor } from './helpers/wait.js'

let server: Herald
beforeAll(async () => {
  server = await startHerald()
})
afterAll(async () => {
  await server?.stop()
})

it('after close 4005 asks getToken again, reconnects and resumes from its cursor', { timeout: 60_000 }, async () => {
  let authDown = false
  let calls = 0
  let callsAfterClose = 0
  const closes: number[] = []
  class RecordingSocket extends WebSocket {
    constructor(url: string) {
      super(url)
      this.on('close', (code) => closes.push(code))
    }
  }
  const c = new RealtimeClient({
    url: server.wsUrl,
    webSocket: RecordingSocket as unknown as WebSocketConstructor,
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
    getToken: async () => {
      calls++
      if (closes.includes(4005)) callsAfterClose++
      // The first token lives 2 s; then the auth backend is down until the server gives up on us.
      if (authDown && !closes.includes(4005)) throw new Error('auth backend unavailable')
      authDown = true
      return makeToken('exp-1', calls === 1 ? 2 : 3600)
    },
  })
  const errors: number[] = []
  c.on('error', (e) => errors.push(e.code))
  const states = recordStates(c)
  const got: number[] = []
  c.subscribe('venue:50', (d) => got.push(d as number))
  const live = new Promise<void>((r) => c.on('subscribed', () => r()))
  c.connect()
  await live
  await server.publish('venue:50', 1)
  await waitFor(() => got.length === 1, 'first message')

  await waitFor(() => closes.includes(4005), 'the server to close with 4005', 45_000, 100)
  for (let i = 2; i <= 4; i++) await server.publish('venue:50', i)
  await waitFor(() => c.state === 'connected' && got.length === 4, 'reconnected and resumed', 10_000)
  expect(got).toEqual([1, 2, 3, 4])
  expect(callsAfterClose).toBeGreaterThanOrEqual(1)
  expect(states).toEqual(['disconnected', 'connecting', 'connected', 'reconnecting', 'connected'])
  c.disconnect()
})
