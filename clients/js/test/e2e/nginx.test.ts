/**
 * Load balancing end to end (issue 8.7): Debian's nginx, with the upstream
 * and proxy settings of deploy/nginx/herald.conf, in front of two Herald
 * nodes sharing the Redis on 127.0.0.1:6379. The SDK connects through nginx;
 * the node holding its socket is killed (SIGKILL); the SDK reconnects through
 * nginx to the other node and resumes, receiving every message once, in
 * order, while publishes never stop.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { RealtimeService } from '../../src/service.js'
import type { WebSocketConstructor } from '../../src/types.js'
import { API_KEY, PACKAGE_ROOT, startHerald, type Herald } from '../helpers/herald.js'
import { waitFor } from '../helpers/wait.js'

const NGINX = process.env.NGINX_PATH ?? '/usr/sbin/nginx'
const CONF = join(PACKAGE_ROOT, '../../deploy/nginx/herald.conf')
const WS = WebSocket as unknown as WebSocketConstructor

const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const c of cleanups.reverse()) await c()
})

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer()
    s.once('error', fail)
    s.listen(0, '127.0.0.1', () => {
      const address = s.address()
      const port = typeof address === 'object' && address ? address.port : 0
      s.close(() => done(port))
    })
  })
}

/** deploy/nginx/herald.conf with this test's ports, in a private nginx. */
async function startNginx(upstreams: string[]): Promise<{ origin: string; proc: ChildProcess }> {
  if (!existsSync(NGINX)) throw new Error(`nginx not found at ${NGINX}: apt-get install -y nginx (or set NGINX_PATH)`)
  const dir = mkdtempSync(join(tmpdir(), 'herald-nginx-'))
  const port = await freePort()
  let site = readFileSync(CONF, 'utf8')
    .replace(/server 127\.0\.0\.1:8081 /, `server ${upstreams[0]} `)
    .replace(/server 127\.0\.0\.1:8082 /, `server ${upstreams[1]} `)
    .replace(/listen 8080;/, `listen 127.0.0.1:${port};`)
  if (site.includes(':8081') || site.includes(':8082')) throw new Error('deploy/nginx/herald.conf changed shape')
  site = site.replace(/max_fails=3 fail_timeout=5s/g, 'max_fails=1 fail_timeout=2s')
  writeFileSync(join(dir, 'site.conf'), site)
  writeFileSync(
    join(dir, 'nginx.conf'),
    `daemon off;\nmaster_process off;\npid ${dir}/nginx.pid;\nerror_log stderr warn;\nevents {}\nhttp {\n  access_log off;\n  client_body_temp_path ${dir};\n  proxy_temp_path ${dir};\n  include ${dir}/site.conf;\n}\n`,
  )
  const proc = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  cleanups.push(
    () =>
      new Promise<void>((done) => {
        if (proc.exitCode !== null) return done()
        proc.once('exit', () => done())
        proc.kill('SIGTERM')
      }),
    () => rmSync(dir, { recursive: true, force: true }),
  )
  const origin = `http://127.0.0.1:${port}`
  await waitFor(
    async () => {
      if (proc.exitCode !== null) throw new Error(`nginx exited: ${stderr}`)
      return (await fetch(`${origin}/health`).catch(() => null))?.ok
    },
    `nginx on ${origin}`,
  )
  return { origin, proc }
}

async function connections(node: Herald): Promise<number> {
  const r = await fetch(`${node.origin}/api/websocket`, { headers: { authorization: `Bearer ${API_KEY}` } })
  return ((await r.json()) as { connections: number }).connections
}

describe('two nodes behind nginx', () => {
  it('the SDK survives the loss of its node and misses nothing', async () => {
    const prefix = `herald-js-${randomBytes(6).toString('hex')}`
    const engine = `kind = "redis"\nredis_url = "redis://127.0.0.1:6379"\nredis_prefix = "${prefix}"`
    const nodes = [await startHerald({ engine }), await startHerald({ engine })]
    cleanups.push(() => Promise.all(nodes.map((n) => n.stop())).then(() => undefined))
    const lb = await startNginx(nodes.map((n) => n.origin.replace('http://', '')))

    const service = new RealtimeService({
      url: `${lb.origin.replace('http', 'ws')}/ws`,
      webSocket: WS,
      minReconnectDelay: 50,
      maxReconnectDelay: 300,
    })
    cleanups.push(() => service.disconnect())
    const got: number[] = []
    let subscribed = 0
    service.on('subscribed', () => subscribed++)
    service.subscribe('chat:lb', (data) => got.push((data as { n: number }).n))
    service.connect()
    await waitFor(() => subscribed > 0, 'subscribed through nginx')

    // Publish through nginx all along: whichever node takes each request.
    let published = 0
    let publishing = true
    const publisher = (async () => {
      while (publishing && published < 2000) {
        const r = await fetch(`${lb.origin}/api/channels/chat:lb/messages`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${API_KEY}`,
            'content-type': 'application/json',
            // A publish whose node died mid-answer is retried with its key:
            // stored once, whichever node answers the retry.
            'idempotency-key': `${prefix}-${published + 1}`,
          },
          body: JSON.stringify({ n: published + 1 }),
        }).catch(() => null)
        if (r?.ok) published++
        await new Promise((done) => setTimeout(done, 10))
      }
    })()
    await waitFor(() => got.length >= 20, 'messages before the failure')

    // Kill the node holding the socket.
    const counts = await Promise.all(nodes.map(connections))
    const victim = counts[0]! >= 1 ? 0 : 1
    expect(counts[victim]).toBe(1)
    nodes[victim]!.process.kill('SIGKILL')
    await waitFor(() => subscribed > 1, 'resubscribed through nginx on the other node', 15_000)
    expect(await connections(nodes[1 - victim]!)).toBe(1)
    const after = published
    await waitFor(() => published >= after + 50, 'publishes continuing on the survivor', 15_000)
    publishing = false
    await publisher
    await waitFor(() => got.length >= published, `all ${published} messages`, 15_000)
    expect(got).toEqual(Array.from({ length: published }, (_, i) => i + 1))
  })
})
