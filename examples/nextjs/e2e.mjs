// The Next.js example against a real Herald (issue 9.6): packs the SDK as npm
// would publish it, installs the tarball into the example, builds it with
// `next build` (which type-checks), starts it, and checks that its API route
// publishes through herald-realtime/server to a subscriber, and that its
// token route mints tokens Herald accepts. Bounded: every wait has a timeout.
//
// Run from the repository root after `cargo build -p herald-realtime`:
//   node examples/nextjs/e2e.mjs
import { execFileSync, spawn } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '../..')
const sdk = join(root, 'clients/js')
const herald = process.env.HERALD_BIN ?? join(root, 'target/debug/herald')
// Next's own entry, run by this node: killing it kills the server (no npx shell between).
const next = join(here, 'node_modules/next/dist/bin/next')
const API_KEY = 'example-api-key'
const SECRET = 'example-hmac-secret-0123456789abcdef'
const WEBHOOK_SECRET = 'example-webhook-secret-0123456789'
const PROXY_SECRET = 'example-proxy-secret-0123456789'
const children = []

function step(what) {
  console.log(`\n-- ${what}`)
}

function run(cmd, args, cwd, env = {}) {
  execFileSync(cmd, args, { cwd, stdio: 'inherit', env: { ...process.env, ...env }, timeout: 300_000 })
}

async function freePort() {
  return new Promise((done, fail) => {
    const s = createServer()
    s.once('error', fail)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => done(port))
    })
  })
}

/** Starts a child and resolves when its output matches `ready`. */
function start(cmd, args, cwd, env, ready, what) {
  const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  let out = ''
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${what} did not start within 60 s:\n${out}`)), 60_000)
    const seen = (chunk) => {
      out += chunk
      const m = ready.exec(out)
      if (m) {
        clearTimeout(timer)
        done(m)
      }
    }
    child.stdout.setEncoding('utf8').on('data', seen)
    child.stderr.setEncoding('utf8').on('data', seen)
    child.once('exit', (code) => fail(new Error(`${what} exited with ${code}:\n${out}`)))
  })
}

async function within(ms, what, fn) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await fn().catch(() => undefined)
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function main() {
  const scratch = mkdtempSync(join(tmpdir(), 'herald-nextjs-'))
  try {
    step('pack the SDK as npm would publish it')
    // npm pack runs prepack (a build), whose output precedes the JSON report.
    const packed = execFileSync('npm', ['pack', '--pack-destination', scratch, '--json'], { cwd: sdk, encoding: 'utf8' })
    const tarball = join(scratch, JSON.parse(packed.slice(packed.search(/^\[/m)))[0].filename)

    step('install the example and the packed SDK')
    run('npm', ['ci', '--no-audit', '--no-fund'], here)
    // Unpacked, not `npm install`ed: the lockfile stays as committed and the
    // package is exactly what the tarball holds (no symlink, no second React).
    const target = join(here, 'node_modules/herald-realtime')
    rmSync(target, { recursive: true, force: true })
    mkdirSync(target, { recursive: true })
    run('tar', ['-xzf', tarball, '-C', target, '--strip-components=1'], here)

    step('next build')
    run(process.execPath, [next, 'build'], here, { NEXT_TELEMETRY_DISABLED: '1' })

    step('start Herald and the example')
    const config = join(scratch, 'herald.toml')
    writeFileSync(
      config,
      `listen = "127.0.0.1:0"\n[auth]\nhmac_secret = "${SECRET}"\napi_keys = ["${API_KEY}"]\n[engine]\nkind = "memory"\n`,
    )
    const [, origin] = await start(herald, ['serve', '--config', config], scratch, {}, /listening on (http:\/\/\S+)/, 'herald')
    const heraldOrigin = origin.replace(/\/+$/, '')
    const wsUrl = `${heraldOrigin.replace(/^http/, 'ws')}/ws`
    const port = await freePort()
    await start(
      process.execPath,
      [next, 'start', '-p', String(port), '-H', '127.0.0.1'],
      here,
      {
        HERALD_URL: heraldOrigin,
        HERALD_WS_URL: wsUrl,
        HERALD_API_KEY: API_KEY,
        HERALD_HMAC_SECRET: SECRET,
        HERALD_WEBHOOK_SECRET: WEBHOOK_SECRET,
        HERALD_PROXY_SECRET: PROXY_SECRET,
        NEXT_TELEMETRY_DISABLED: '1',
      },
      /Ready in|started server/i,
      'next start',
    )
    const app = `http://127.0.0.1:${port}`

    step('the page renders the seed component')
    const page = await within(20_000, 'the page', async () => {
      const r = await fetch(app)
      return r.ok ? r.text() : undefined
    })
    if (!page.includes('Venue 42') || !page.includes('id="status"')) throw new Error(`unexpected page:\n${page.slice(0, 2000)}`)

    step('the token route mints a token Herald accepts; the API route publishes to its subscriber')
    const token = await (await fetch(`${app}/api/herald-token`)).text()
    // The SDK itself, from the installed tarball, as a Node subscriber.
    const { RealtimeClient } = await import(join(here, 'node_modules/herald-realtime/dist/index.js'))
    const { default: WebSocket } = await import(join(sdk, 'node_modules/ws/index.js'))
    const client = new RealtimeClient({ url: wsUrl, token, webSocket: WebSocket })
    const received = []
    let subscribed = false
    client.on('subscribed', () => (subscribed = true))
    client.on('error', (e) => console.error('client error', e))
    client.subscribe('venue:42', (data) => received.push(data))
    client.connect()
    await within(10_000, 'the subscription (a token from the route)', async () => subscribed)
    const put = await fetch(`${app}/api/venues/42`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Blue Bar', capacity: 120 }),
    })
    if (!put.ok) throw new Error(`PUT /api/venues/42 answered ${put.status}: ${await put.text()}`)
    const answer = await put.json()
    if (answer.offset !== 1) throw new Error(`unexpected route answer ${JSON.stringify(answer)}`)
    const update = await within(10_000, 'the venue update', async () => received[0])
    if (update.type !== 'venue_updated' || update.venue.name !== 'Blue Bar') {
      throw new Error(`unexpected update ${JSON.stringify(update)}`)
    }
    client.disconnect()

    step('the webhook receivers (Node and edge runtimes) take a signed event and refuse a tampered or stale one')
    // Signed here the way Herald signs (t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">).
    const body = JSON.stringify({ id: 'e2e-1', event: 'user_offline', ts: Date.now(), data: { userId: 'demo-user', note: 'é🎉' } })
    const signature = (b, t = Math.floor(Date.now() / 1000)) =>
      `t=${t},v1=${createHmac('sha256', WEBHOOK_SECRET).update(`${t}.${b}`).digest('hex')}`
    const hook = (path, b, header) =>
      fetch(`${app}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'herald-signature': header }, body: b })
    for (const path of ['/api/herald/webhooks', '/api/herald/webhooks-edge']) {
      const ok = await hook(path, body, signature(body))
      const okBody = await ok.json()
      if (ok.status !== 200 || okBody.received !== 'user_offline' || okBody.data.note !== 'é🎉') {
        throw new Error(`${path}: a signed event answered ${ok.status} ${JSON.stringify(okBody)}`)
      }
      const tampered = await hook(path, body.replace('demo-user', 'someone'), signature(body))
      const stale = await hook(path, body, signature(body, Math.floor(Date.now() / 1000) - 3600))
      const reasons = [(await tampered.json()).error, (await stale.json()).error]
      if (tampered.status !== 400 || stale.status !== 400 || reasons.join() !== 'no_matching_signature,timestamp_out_of_tolerance') {
        throw new Error(`${path}: tampered ${tampered.status}, stale ${stale.status}: ${reasons}`)
      }
    }
    const again = await (await hook('/api/herald/webhooks', body, signature(body))).json()
    if (again.duplicate !== 'e2e-1') throw new Error(`a repeated id was not deduplicated: ${JSON.stringify(again)}`)

    step('the subscribe proxy route: the bearer secret, then staff of venue 42 only')
    const ask = (channel, secret = PROXY_SECRET) =>
      fetch(`${app}/api/herald/subscribe`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
        body: JSON.stringify({ user: 'demo-user', client: '1f', channel, transport: 'websocket' }),
      })
    const allowed = await (await ask('promotions:42')).json()
    const denied = await (await ask('promotions:7')).json()
    const stranger = await ask('promotions:42', 'wrong-secret')
    if (allowed.allow !== true || denied.allow !== false || stranger.status !== 401) {
      throw new Error(`subscribe proxy: ${JSON.stringify(allowed)} ${JSON.stringify(denied)} ${stranger.status}`)
    }
    console.log('\nexamples/nextjs: the route published, the subscriber received it; webhooks verified; the proxy decided')
  } finally {
    for (const c of children) c.kill('SIGTERM')
    rmSync(scratch, { recursive: true, force: true })
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err)
    for (const c of children) c.kill('SIGKILL')
    process.exit(1)
  },
)
