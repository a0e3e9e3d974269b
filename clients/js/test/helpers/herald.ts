/**
 * Starts a real Herald process for a test file: writes a TOML config into a
 * temp dir, runs `herald serve`, and reads the bound address from stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

// Not `new URL(..)`: under jsdom the global URL is jsdom's, which fileURLToPath rejects.
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const HERALD_BIN = process.env.HERALD_BIN ?? resolve(PACKAGE_ROOT, '../../target/debug/herald')
export const SECRET = 'test-secret-0123456789abcdef'
export const API_KEY = 'test-api-key'

export interface HeraldOptions {
  /** Extra TOML appended to the base config (namespaces, heartbeat…). */
  extra?: string
  /** Engine section body; default memory. */
  engine?: string
  /** Run `herald serve --dev` instead of a config file. */
  dev?: boolean
  /** Reuse a directory (to restart on the same embedded store). */
  dir?: string
}

export interface Herald {
  origin: string
  wsUrl: string
  apiKey: string
  dir: string
  process: ChildProcess
  /** Stops the process (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>
  publish(channel: string, data: unknown): Promise<{ offset: number; cursor: string }>
  notify(user: string, data: unknown): Promise<{ offset: number; cursor: string }>
}

export const BASE_CONFIG = `listen = "127.0.0.1:0"
[auth]
hmac_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
allow_anonymous = true
leeway = "0s"
[heartbeat]
ping_interval = "1s"
pong_timeout = "1s"
[[namespaces]]
name = "chat"
subscribe = "public"
client_publish = true
[[namespaces]]
name = "pub"
subscribe = "public"
`

/** A HS256 JWT for `sub`, valid `ttl` seconds (negative: already expired). */
export function makeToken(sub: string, ttl = 3600, extra: Record<string, unknown> = {}, secret = SECRET): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttl, ...extra })}`
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`
}

export function assertBinary(): void {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(
      `Herald binary not found at ${HERALD_BIN}. Build it first (cargo build -p herald-realtime in the repo root) or set HERALD_BIN.`,
    )
  }
}

export async function startHerald(opts: HeraldOptions = {}): Promise<Herald> {
  assertBinary()
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'herald-js-'))
  let args: string[]
  if (opts.dev) {
    args = ['serve', '--dev', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'data')]
  } else {
    const engine = opts.engine ?? 'kind = "memory"'
    const config = `${BASE_CONFIG}${opts.extra ?? ''}\n[engine]\n${engine}\n`
    writeFileSync(join(dir, 'herald.toml'), config)
    args = ['serve', '--config', join(dir, 'herald.toml')]
  }
  const child = spawn(HERALD_BIN, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (s: string) => {
    stderr = (stderr + s).slice(-20_000)
    if (process.env.HERALD_LOG) process.stderr.write(s)
  })
  const origin = await new Promise<string>((resolveOrigin, reject) => {
    let out = ''
    const timer = setTimeout(() => fail(new Error('herald did not print its address within 20 s')), 20_000)
    function fail(err: Error): void {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${err.message}\nargs: ${args.join(' ')}\nstdout: ${out}\nstderr: ${stderr}`))
    }
    child.stdout!.setEncoding('utf8')
    child.stdout!.on('data', (s: string) => {
      out += s
      const m = /listening on (http:\/\/\S+)/.exec(out)
      if (m) {
        clearTimeout(timer)
        resolveOrigin(m[1]!.replace(/\/+$/, ''))
      }
    })
    child.once('exit', (code) => fail(new Error(`herald exited with ${code} before listening`)))
    child.once('error', (err) => fail(err))
  })
  let apiKey = API_KEY
  if (opts.dev) {
    const env = readFileSync(join(dir, 'data', 'dev.env'), 'utf8')
    const m = /HERALD_AUTH_API_KEYS=(\S+)/.exec(env)
    if (!m) throw new Error(`no API key in dev.env: ${env}`)
    apiKey = m[1]!.replace(/^"|"$/g, '').split(',')[0]!
  }
  const post = async (path: string, data: unknown) => {
    const res = await fetch(origin + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(data),
    })
    const body = (await res.json()) as { ok?: boolean; offset: number; cursor: string }
    if (!res.ok || !body.ok) throw new Error(`POST ${path} -> ${res.status} ${JSON.stringify(body)}`)
    return body
  }
  let exited: Promise<void> | null = null
  return {
    origin,
    wsUrl: `${origin.replace(/^http/, 'ws')}/ws`,
    apiKey,
    dir,
    process: child,
    stop() {
      exited ??= new Promise<void>((done) => {
        if (child.exitCode !== null || child.signalCode !== null) return done()
        const kill = setTimeout(() => child.kill('SIGKILL'), 5_000)
        child.once('exit', () => {
          clearTimeout(kill)
          done()
        })
        child.kill('SIGTERM')
      }).then(() => {
        if (!opts.dir) rmSync(dir, { recursive: true, force: true })
      })
      return exited
    },
    publish: (channel, data) => post(`/api/channels/${channel}/messages`, data),
    notify: (user, data) => post(`/api/users/${encodeURIComponent(user)}/notifications`, data),
  }
}
