/**
 * The /admin dashboard in headless Chromium (Debian's /usr/bin/chromium via
 * playwright-core) against a real Herald: sign in with the API key, watch the
 * connection count move when a client connects, publish from the form and
 * watch the delivered counter move, look a user up and disconnect it (its
 * socket closes with 4007). Screenshots go to test-artifacts/.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import WebSocket from 'ws'
import { chromium, type Browser, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { API_KEY, PACKAGE_ROOT, makeToken, startHerald, type Herald } from '../helpers/herald.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts')
const ASSET = join(PACKAGE_ROOT, '../../crates/herald-server/assets/admin.html')

let server: Herald
let browser: Browser

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: apt-get update && apt-get install -y chromium (or set CHROMIUM_PATH)`)
  }
  mkdirSync(ARTIFACTS, { recursive: true })
  server = await startHerald()
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
})
afterAll(async () => {
  await browser?.close()
  await server?.stop()
})

/** A raw WebSocket client of `user`, subscribed to `channel`; records pushes and its close. */
async function client(user: string, channel: string) {
  const ws = new WebSocket(server.wsUrl)
  const frames: Array<Record<string, unknown>> = []
  const closed = new Promise<{ code: number; disconnect: Record<string, unknown> | undefined }>((resolve) => {
    ws.on('close', (code) => resolve({ code, disconnect: frames.find((f) => f.type === 'disconnect') }))
  })
  const next = (type: string) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const seen = frames.find((f) => f.type === type)
      if (seen) return resolve(seen)
      const on = (raw: WebSocket.RawData) => {
        const f = JSON.parse(String(raw)) as Record<string, unknown>
        if (f.type === type) {
          ws.off('message', on)
          resolve(f)
        }
      }
      ws.on('message', on)
    })
  ws.on('message', (raw) => {
    const f = JSON.parse(String(raw)) as Record<string, unknown>
    frames.push(f)
    // The test server pings every second and drops a silent client.
    if (f.type === 'ping') ws.send(JSON.stringify({ type: 'pong' }))
  })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  ws.send(JSON.stringify({ type: 'connect', id: 1, token: makeToken(user) }))
  await next('connected')
  ws.send(JSON.stringify({ type: 'subscribe', id: 2, channel }))
  await next('subscribed')
  return { ws, frames, closed, next }
}

async function number(page: Page, id: string): Promise<number> {
  return Number(await page.textContent(`#${id}`))
}

async function signIn(page: Page, key: string): Promise<void> {
  await page.fill('#api-key', key)
  await page.click('#sign-in button[type="submit"]')
}

describe('/admin in Chromium', () => {
  it('is the page built from the current sources, and its API needs the key', async () => {
    const res = await fetch(`${server.origin}/admin`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/text\/html/)
    expect(res.headers.get('cache-control')).toBe('no-store')
    const served = await res.text()
    expect(served === readFileSync(ASSET, 'utf8'), 'the binary serves an outdated admin page: rebuild it (cargo build -p herald-realtime)').toBe(true)
    for (const path of ['/api/admin/overview', '/api/admin/channels', '/api/admin/channels/pub:x', '/api/admin/users/u1']) {
      const r = await fetch(`${server.origin}${path}`)
      expect(r.status, path).toBe(401)
      const wrong = await fetch(`${server.origin}${path}`, { headers: { Authorization: 'Bearer nope' } })
      expect(wrong.status, path).toBe(401)
    }
    const post = await fetch(`${server.origin}/api/admin/users/u1/disconnect`, { method: 'POST' })
    expect(post.status).toBe(401)
  })

  it('signs in, shows counts move, publishes from the form, and disconnects a user', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } })
    const errors: string[] = []
    page.on('pageerror', (err) => errors.push(String(err)))
    await page.goto(`${server.origin}/admin`)
    // A wrong key is refused and nothing is kept.
    await signIn(page, 'not-the-key')
    await page.waitForFunction(() => /refused/.test(document.getElementById('sign-in-error')!.textContent ?? ''))
    expect(await page.evaluate(() => sessionStorage.getItem('herald-admin-key'))).toBeNull()
    await signIn(page, API_KEY)
    await page.waitForSelector('#dashboard:not([hidden])', { timeout: 10_000 })
    expect(page.url()).not.toContain(API_KEY)
    expect(await page.evaluate(() => sessionStorage.getItem('herald-admin-key'))).toBe(API_KEY)
    await page.waitForFunction(() => /ready/.test(document.getElementById('engine')!.textContent ?? ''))
    const before = await number(page, 'connections')

    const carol = await client('carol', 'pub:admin')
    await page.waitForFunction((n) => Number(document.getElementById('connections')!.textContent) === n + 1, before, { timeout: 10_000 })
    await page.waitForFunction(() => /pub:admin/.test(document.getElementById('busiest')!.textContent ?? ''), null, { timeout: 10_000 })

    // Publish from the form: the client gets it, and "delivered" moves.
    const delivered = await number(page, 'delivered')
    await page.fill('#publish-channel', 'pub:admin')
    await page.fill('#publish-data', '{"from":"admin"}')
    const pushed = carol.next('message')
    await page.click('#publish')
    await page.waitForFunction(() => /^ok, offset 1$/.test(document.getElementById('publish-result')!.textContent ?? ''))
    const message = await pushed
    expect(message.data).toEqual({ from: 'admin' })
    await page.waitForFunction((n) => Number(document.getElementById('delivered')!.textContent) >= n + 1, delivered, { timeout: 10_000 })

    // The channel's history, through the admin API.
    await page.fill('#history-channel', 'pub:admin')
    await page.click('#history-form button[type="submit"]')
    await page.waitForFunction(() => /\{"from":"admin"\}/.test(document.getElementById('history')!.textContent ?? ''))
    expect(await page.textContent('#history-info')).toMatch(/1 subscribers here, last offset 1/)

    // Look the user up, then disconnect it: its socket closes with 4007.
    await page.fill('#user-id', 'carol')
    await page.click('#user-form button[type="submit"]')
    await page.waitForFunction(() => /online on this node: 1 connections/.test(document.getElementById('user-info')!.textContent ?? ''))
    expect(await page.textContent('#user-sessions')).toContain('pub:admin')
    await page.screenshot({ path: join(ARTIFACTS, 'admin-dashboard.png'), fullPage: true })
    await page.click('#disconnect')
    const { code, disconnect } = await carol.closed
    expect(code).toBe(4007)
    expect(disconnect).toMatchObject({ code: 4007, reconnect: false })
    await page.waitForFunction(() => /disconnected 1 sessions/.test(document.getElementById('user-info')!.textContent ?? ''))
    await page.waitForFunction((n) => Number(document.getElementById('connections')!.textContent) === n, before, { timeout: 10_000 })
    await page.screenshot({ path: join(ARTIFACTS, 'admin-after-disconnect.png'), fullPage: true })
    expect(errors).toEqual([])
    await page.close()
  })

  it('the admin API answers a user, a channel and a disconnect as documented', async () => {
    const auth = { Authorization: `Bearer ${API_KEY}` }
    const dave = await client('dave', 'pub:api')
    await server.publish('pub:api', { n: 1 })
    await server.publish('pub:api', { n: 2 })
    await dave.next('message')
    const channels = (await (await fetch(`${server.origin}/api/admin/channels?limit=5`, { headers: auth })).json()) as {
      total: number
      channels: Array<{ channel: string; subscribers: number }>
    }
    expect(channels.channels).toContainEqual({ channel: 'pub:api', subscribers: 1 })
    const bad = await fetch(`${server.origin}/api/admin/channels?limit=0`, { headers: auth })
    expect(bad.status).toBe(400)
    const channel = (await (await fetch(`${server.origin}/api/admin/channels/pub:api?limit=1`, { headers: auth })).json()) as Record<string, unknown>
    expect(channel).toMatchObject({ channel: 'pub:api', subscribers: 1, offset: 2, history: [{ offset: 2, data: { n: 2 } }] })
    const user = (await (await fetch(`${server.origin}/api/admin/users/dave`, { headers: auth })).json()) as Record<string, unknown>
    expect(user).toMatchObject({ user: 'dave', online: true, notifications: { offset: 0 } })
    expect((user.connections as Array<{ channels: string[] }>)[0]!.channels).toEqual(['pub:api'])
    const gone = (await (await fetch(`${server.origin}/api/admin/users/nobody/disconnect`, { method: 'POST', headers: auth })).json()) as Record<string, unknown>
    expect(gone).toMatchObject({ ok: true, disconnected: 0 })
    const r = (await (await fetch(`${server.origin}/api/admin/users/dave/disconnect`, { method: 'POST', headers: auth })).json()) as Record<string, unknown>
    expect(r).toMatchObject({ ok: true, user: 'dave', disconnected: 1 })
    expect((await dave.closed).code).toBe(4007)
    const after = (await (await fetch(`${server.origin}/api/admin/users/dave`, { headers: auth })).json()) as Record<string, unknown>
    expect(after).toMatchObject({ online: false, connections: [] })
  })
})
