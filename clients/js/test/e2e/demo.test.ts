/**
 * The /realtime-demo page in headless Chromium (Debian's /usr/bin/chromium via
 * playwright-core), served by a real Herald in dev mode. Page B goes through a
 * proxy that can refuse WebSocket upgrades, to watch it fall back to polling
 * and come back.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PACKAGE_ROOT, makeToken, startHerald, type Herald } from '../helpers/herald.js'
import { startProxy, type Proxy } from '../helpers/proxy.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts')
const ASSET = join(PACKAGE_ROOT, '../../crates/herald-server/assets/realtime-demo.html')

let server: Herald
let proxy: Proxy
let browser: Browser

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: apt-get update && apt-get install -y chromium (or set CHROMIUM_PATH)`)
  }
  mkdirSync(ARTIFACTS, { recursive: true })
  server = await startHerald({ dev: true })
  proxy = await startProxy(server.origin)
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
})
afterAll(async () => {
  await browser?.close()
  await proxy?.close()
  await server?.stop()
})

async function open(origin: string, query: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  page.on('pageerror', (err) => console.error('page error:', err))
  await page.goto(`${origin}/realtime-demo?${query}`)
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 10_000 })
  return page
}

async function offsets(page: Page, channel: string): Promise<number[]> {
  const values = await page.$$eval(`#messages li[data-channel="${channel}"]`, (lis) =>
    lis.map((li) => Number((li as HTMLElement).dataset.offset)),
  )
  return values.reverse() // the list shows the newest first
}

async function notify(user: string, data: unknown): Promise<void> {
  await server.notify(user, data)
}

async function publishFrom(page: Page, channel: string, data: unknown): Promise<void> {
  await page.fill('#publish-channel', channel)
  await page.fill('#publish-data', JSON.stringify(data))
  await page.click('#publish')
  await page.waitForFunction(() => /^published /.test(document.getElementById('publish-result')!.textContent ?? ''), null, {
    timeout: 10_000,
  })
  await page.evaluate(() => (document.getElementById('publish-result')!.textContent = ''))
}

describe('/realtime-demo in Chromium', () => {
  it('is the page built from the current SDK sources', async () => {
    const res = await fetch(`${server.origin}/realtime-demo`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/text\/html/)
    const served = await res.text()
    // The server embeds the asset at compile time: a mismatch means a stale binary.
    expect(served === readFileSync(ASSET, 'utf8'), 'the binary serves an outdated demo: rebuild it (cargo build -p herald-realtime)').toBe(true)
  })

  it('shows a message published in one page in the other, falls back to polling when the socket is blocked, and recovers', async () => {
    const channel = 'chat:demo'
    const tuning = 'fallbackAfter=1&minReconnectDelay=100&maxReconnectDelay=600&longPollWait=5&pollInterval=5000'
    const a = await open(server.origin, `user=alice&channels=${channel}`)
    const b = await open(proxy.origin, `user=bob&channels=${channel}&${tuning}`)
    await b.waitForFunction(() => document.querySelectorAll('#channels li').length === 1)
    // The subscription goes out right after `connected`; publish until B shows one.
    for (let i = 0; i < 50 && (await offsets(b, channel)).length === 0; i++) {
      await publishFrom(a, channel, { text: `hello ${i}` })
      await b.waitForTimeout(100)
    }
    const first = await offsets(b, channel)
    expect(first.length).toBeGreaterThan(0)
    expect(await b.locator('#messages li').first().textContent()).toContain('hello')
    expect(await b.locator('#polling').isHidden()).toBe(true)

    // Block B's WebSocket: it keeps receiving through polling.
    proxy.blockUpgrades(true)
    proxy.dropSockets()
    await b.waitForSelector('#state[data-state="polling"]', { timeout: 10_000 })
    expect(await b.locator('#polling').isVisible()).toBe(true)
    await publishFrom(a, channel, { text: 'while polling' })
    await b.waitForFunction(() => document.getElementById('messages')!.textContent!.includes('while polling'), null, { timeout: 10_000 })
    // Bob's notifications come through polling too (dev mode: /api/notifications?user=bob).
    await notify('bob', { title: 'polled notification' })
    await b.waitForFunction(() => document.getElementById('notifications')!.textContent!.includes('polled notification'), null, {
      timeout: 10_000,
    })
    mkdirSync(ARTIFACTS, { recursive: true })
    await b.screenshot({ path: join(ARTIFACTS, 'realtime-demo-polling.png'), fullPage: true })

    // Unblock: B goes back to the socket, and nothing is lost or repeated.
    proxy.blockUpgrades(false)
    await b.waitForSelector('#state[data-state="connected"]', { timeout: 10_000 })
    expect(await b.locator('#polling').isHidden()).toBe(true)
    await publishFrom(a, channel, { text: 'after recovery' })
    await b.waitForFunction(() => document.getElementById('messages')!.textContent!.includes('after recovery'), null, { timeout: 10_000 })
    const all = await offsets(b, channel)
    const start = all[0]!
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => start + i))
    const aOffsets = await offsets(a, channel)
    expect(aOffsets.slice(aOffsets.indexOf(start))).toEqual(all)
    await a.screenshot({ path: join(ARTIFACTS, 'realtime-demo-a.png'), fullPage: true })
    await b.screenshot({ path: join(ARTIFACTS, 'realtime-demo-b.png'), fullPage: true })
  })

  it('shows notifications for the dev-mode user', async () => {
    const page = await open(server.origin, 'user=carol')
    await notify('carol', { title: 'Venue Updated' })
    await page.waitForFunction(() => document.getElementById('notifications')!.textContent!.includes('Venue Updated'), null, {
      timeout: 10_000,
    })
    expect(await page.textContent('#notification-count')).toBe('1')
  })

  it('presets the dev-mode user only in dev mode; elsewhere it connects anonymously and says so', async () => {
    const dev = await open(server.origin, '')
    expect(await dev.inputValue('#user')).toBe('alice')
    expect(await dev.textContent('#mode')).toMatch(/Dev mode/)
    const production = await startHerald()
    try {
      const page = await open(production.origin, 'channels=pub:lobby')
      expect(await page.inputValue('#user')).toBe('')
      expect(await page.textContent('#mode')).toMatch(/not in dev mode/)
      await production.publish('pub:lobby', { hello: 'anonymous' })
      await page.waitForFunction(() => document.getElementById('messages')!.textContent!.includes('anonymous'), null, {
        timeout: 10_000,
      })
      expect(await page.textContent('#events')).not.toMatch(/error 1001/)
      await page.screenshot({ path: join(ARTIFACTS, 'realtime-demo-production.png'), fullPage: true })
    } finally {
      await production.stop()
    }
  })

  it('shows who is in each channel, kept live by joins and leaves', async () => {
    const rooms = await startHerald({ extra: '[[namespaces]]\nname = "room"\nsubscribe = "authenticated"\njoin_leave = true\n' })
    try {
      const token = (user: string) => makeToken(user, 3600, { info: { name: user } })
      const presenceText = (page: Page) =>
        page.$eval('#channels li[data-channel="room:1"] .presence', (el) => el.textContent ?? '')
      const a = await open(rooms.origin, `token=${token('ann')}&channels=room:1`)
      await a.waitForFunction(
        () => /^1 here \(1 users\): ann$/.test(document.querySelector('#channels .presence')?.textContent ?? ''),
        null,
        { timeout: 10_000 },
      )
      const b = await open(rooms.origin, `token=${token('bob')}&channels=room:1`)
      await a.waitForFunction(() => /^2 here \(2 users\): ann, bob$/.test(document.querySelector('#channels .presence')?.textContent ?? ''), null, {
        timeout: 10_000,
      })
      expect(await presenceText(b)).toMatch(/^2 here/)
      await a.screenshot({ path: join(ARTIFACTS, 'realtime-demo-presence.png'), fullPage: true })
      await b.close()
      await a.waitForFunction(() => /^1 here \(1 users\): ann$/.test(document.querySelector('#channels .presence')?.textContent ?? ''), null, {
        timeout: 10_000,
      })
      expect(await a.textContent('#events')).toMatch(/bob left room:1/)
      // A namespace without presence says so.
      const c = await open(rooms.origin, `token=${token('cid')}&channels=pub:1`)
      await c.waitForFunction(() => /presence is off/.test(document.querySelector('#channels .presence')?.textContent ?? ''), null, {
        timeout: 10_000,
      })
    } finally {
      await rooms.stop()
    }
  })
})
