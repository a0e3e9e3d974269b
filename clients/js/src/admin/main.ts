/**
 * The /admin dashboard (SPEC §5 "Administration"). Signs in with an API key
 * kept in this tab's session storage (never in a URL), then every
 * `INTERVAL_MS` reads `/api/admin/overview` and `/api/admin/channels`: live
 * counts, published and delivered messages per second over the last five
 * minutes, the busiest channels, engine and cluster status, and the
 * slow-consumer, rate-limit and engine-error counters as events when they
 * move. Forms publish to a channel, notify a user, look up a channel's
 * recent history and a user's sessions, and disconnect a user.
 *
 * Everything the server sends is shown with `textContent`, never as HTML.
 */

const INTERVAL_MS = 2000
const WINDOW_MS = 5 * 60 * 1000
const KEY_STORAGE = 'herald-admin-key'
const MAX_EVENTS = 200

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T

interface Overview {
  node: string
  uptime_s: number
  connections: number
  users: number
  channels: number
  subscriptions: number
  messages_in: number
  messages_out: number
  engine: string
  ready: boolean
  events: Record<string, number>
  cluster?: { nodes?: number; connections?: number; subscriptions?: number; error?: string }
}

interface Sample {
  at: number
  in: number
  out: number
}

class Unauthorized extends Error {}

let apiKey: string | null = sessionStorage.getItem(KEY_STORAGE)
let timer: ReturnType<typeof setInterval> | null = null
let last: { at: number; in: number; out: number; events: Record<string, number> } | null = null
let samples: Sample[] = []

async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers = new Headers(init.headers)
  headers.set('Authorization', `Bearer ${apiKey ?? ''}`)
  if (init.body !== undefined) headers.set('Content-Type', 'application/json')
  const res = await fetch(path, { ...init, headers, cache: 'no-store' })
  const body = (await res.json().catch(() => null)) as { error?: { code: number; message: string } } | null
  if (res.status === 401) throw new Unauthorized(body?.error?.message ?? 'unauthorized')
  if (!res.ok) throw new Error(body?.error ? `${res.status} (${body.error.code}): ${body.error.message}` : `HTTP ${res.status}`)
  return body as T
}

function show(signedIn: boolean): void {
  $('sign-in-panel').hidden = signedIn
  $('dashboard').hidden = !signedIn
  $('sign-out').hidden = !signedIn
}

function signOut(message = ''): void {
  apiKey = null
  sessionStorage.removeItem(KEY_STORAGE)
  if (timer !== null) clearInterval(timer)
  timer = null
  last = null
  samples = []
  $('sign-in-error').textContent = message
  show(false)
}

async function signIn(key: string): Promise<void> {
  apiKey = key
  try {
    await refresh()
  } catch (e) {
    signOut(e instanceof Unauthorized ? 'That API key was refused.' : `Cannot reach the server: ${String(e)}`)
    return
  }
  sessionStorage.setItem(KEY_STORAGE, key)
  show(true)
  if (timer === null) timer = setInterval(() => void tick(), INTERVAL_MS)
}

async function tick(): Promise<void> {
  try {
    await refresh()
  } catch (e) {
    if (e instanceof Unauthorized) signOut('The API key is no longer accepted.')
    else $('updated').textContent = `update failed: ${String(e)}`
  }
}

async function refresh(): Promise<void> {
  const [o, busiest] = await Promise.all([
    api<Overview>('/api/admin/overview'),
    api<{ total: number; channels: Array<{ channel: string; subscribers: number }> }>('/api/admin/channels?limit=10'),
  ])
  const now = Date.now()
  $('node').textContent = `node ${o.node}, up ${formatUptime(o.uptime_s)}`
  const engine = $('engine')
  engine.textContent = `${o.engine}: ${o.ready ? 'ready' : 'unavailable'}`
  engine.dataset.ok = String(o.ready)
  $('connections').textContent = String(o.connections)
  $('users').textContent = String(o.users)
  $('channels-count').textContent = String(o.channels)
  $('subscriptions').textContent = String(o.subscriptions)
  $('published').textContent = String(o.messages_in)
  $('delivered').textContent = String(o.messages_out)
  $('updated').textContent = `updated ${new Date(now).toLocaleTimeString()}`
  $('cluster').textContent = o.cluster
    ? o.cluster.error
      ? `cluster: ${o.cluster.error}`
      : `cluster: ${o.cluster.nodes ?? 0} nodes, ${o.cluster.connections ?? 0} connections, ${o.cluster.subscriptions ?? 0} subscriptions`
    : 'single node'
  if (last) {
    const secs = Math.max((now - last.at) / 1000, 0.001)
    samples.push({ at: now, in: Math.max(o.messages_in - last.in, 0) / secs, out: Math.max(o.messages_out - last.out, 0) / secs })
    samples = samples.filter((s) => now - s.at <= WINDOW_MS)
    for (const [name, value] of Object.entries(o.events)) {
      const before = last.events[name] ?? value
      if (value > before) addEvent(`+${value - before} ${name.replace(/_/g, ' ')}`, name === 'engine_errors' ? 'error' : 'warn')
    }
  }
  last = { at: now, in: o.messages_in, out: o.messages_out, events: o.events }
  drawChart(now)
  const body = $('busiest')
  body.replaceChildren(
    ...busiest.channels.map((c) => {
      const tr = document.createElement('tr')
      for (const text of [c.channel, String(c.subscribers)]) {
        const td = document.createElement('td')
        td.textContent = text
        tr.append(td)
      }
      return tr
    }),
  )
}

function formatUptime(s: number): string {
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.floor(s / 60)} min`
  return `${Math.floor(s / 3600)} h`
}

function addEvent(text: string, kind: 'warn' | 'error' | 'info' = 'info'): void {
  const li = document.createElement('li')
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`
  if (kind !== 'info') li.className = kind
  const list = $('events')
  list.prepend(li)
  while (list.children.length > MAX_EVENTS) list.lastElementChild?.remove()
}

const SVG = 'http://www.w3.org/2000/svg'

function drawChart(now: number): void {
  const svg = $('chart') as unknown as SVGSVGElement
  const width = 600
  const height = 160
  const top = Math.max(1, ...samples.map((s) => Math.max(s.in, s.out)))
  const x = (at: number) => width - ((now - at) / WINDOW_MS) * width
  const y = (v: number) => height - 4 - (v / top) * (height - 20)
  const line = (pick: (s: Sample) => number, color: string) => {
    const p = document.createElementNS(SVG, 'polyline')
    p.setAttribute('fill', 'none')
    p.setAttribute('stroke', color)
    p.setAttribute('stroke-width', '2')
    p.setAttribute('vector-effect', 'non-scaling-stroke')
    p.setAttribute('points', samples.map((s) => `${x(s.at).toFixed(1)},${y(pick(s)).toFixed(1)}`).join(' '))
    return p
  }
  const label = document.createElementNS(SVG, 'text')
  label.setAttribute('x', '4')
  label.setAttribute('y', '12')
  label.setAttribute('font-size', '11')
  label.setAttribute('fill', 'currentColor')
  label.textContent = `${top.toFixed(top < 10 ? 1 : 0)}/s`
  svg.replaceChildren(label, line((s) => s.in, 'var(--in)'), line((s) => s.out, 'var(--out)'))
  const newest = samples[samples.length - 1]
  $('rates').textContent = newest
    ? `now: ${newest.in.toFixed(1)} published/s, ${newest.out.toFixed(1)} delivered/s`
    : 'collecting…'
}

function parseJson(text: string, result: HTMLElement): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    result.textContent = 'not valid JSON'
    result.className = 'error'
    return undefined
  }
}

async function send(result: HTMLElement, path: string, data: unknown): Promise<void> {
  try {
    const r = await api<{ offset: number }>(path, { method: 'POST', body: JSON.stringify(data) })
    result.textContent = `ok, offset ${r.offset}`
    result.className = ''
  } catch (e) {
    result.textContent = String(e instanceof Error ? e.message : e)
    result.className = 'error'
  }
}

$('sign-in').addEventListener('submit', (ev) => {
  ev.preventDefault()
  const input = $<HTMLInputElement>('api-key')
  const key = input.value.trim()
  input.value = ''
  if (key) void signIn(key)
})

$('sign-out').addEventListener('click', () => signOut())

$('publish-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  const result = $('publish-result')
  const data = parseJson($<HTMLTextAreaElement>('publish-data').value, result)
  if (data === undefined) return
  const channel = $<HTMLInputElement>('publish-channel').value.trim()
  void send(result, `/api/channels/${encodeURIComponent(channel)}/messages`, data)
})

$('notify-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  const result = $('notify-result')
  const data = parseJson($<HTMLTextAreaElement>('notify-data').value, result)
  if (data === undefined) return
  const user = $<HTMLInputElement>('notify-user').value.trim()
  void send(result, `/api/users/${encodeURIComponent(user)}/notifications`, data)
})

$('history-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  const channel = $<HTMLInputElement>('history-channel').value.trim()
  const info = $('history-info')
  void (async () => {
    try {
      const r = await api<{ subscribers: number; offset: number; epoch: string; history: Array<{ offset: number; ts: number; data: unknown }> }>(
        `/api/admin/channels/${encodeURIComponent(channel)}?limit=20`,
      )
      info.textContent = `${r.subscribers} subscribers here, last offset ${r.offset} (epoch ${r.epoch})`
      info.className = 'hint'
      $('history').replaceChildren(
        ...r.history.reverse().map((m) => {
          const li = document.createElement('li')
          li.textContent = `#${m.offset} ${new Date(m.ts).toLocaleTimeString()} ${JSON.stringify(m.data)}`
          return li
        }),
      )
    } catch (e) {
      info.textContent = String(e instanceof Error ? e.message : e)
      info.className = 'error'
    }
  })()
})

async function lookUpUser(): Promise<void> {
  const user = $<HTMLInputElement>('user-id').value.trim()
  const info = $('user-info')
  try {
    const r = await api<{ online: boolean; connections: Array<{ client: string; connected_at: number; channels: string[] }>; notifications: { offset: number } }>(
      `/api/admin/users/${encodeURIComponent(user)}`,
    )
    info.textContent = `${r.online ? 'online' : 'offline'} on this node: ${r.connections.length} connections; inbox at offset ${r.notifications.offset}`
    info.className = 'hint'
    $('user-sessions').replaceChildren(
      ...r.connections.map((c) => {
        const li = document.createElement('li')
        li.textContent = `${c.client} since ${new Date(c.connected_at).toLocaleTimeString()}: ${c.channels.join(', ') || 'no channels'}`
        return li
      }),
    )
  } catch (e) {
    info.textContent = String(e instanceof Error ? e.message : e)
    info.className = 'error'
  }
}

$('user-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  void lookUpUser()
})

$('disconnect').addEventListener('click', () => {
  const user = $<HTMLInputElement>('user-id').value.trim()
  if (!user) return
  void (async () => {
    try {
      const r = await api<{ disconnected: number }>(`/api/admin/users/${encodeURIComponent(user)}/disconnect`, { method: 'POST' })
      addEvent(`disconnected ${user}: ${r.disconnected} sessions`)
      $('user-info').textContent = `disconnected ${r.disconnected} sessions`
      $('user-sessions').replaceChildren()
    } catch (e) {
      $('user-info').textContent = String(e instanceof Error ? e.message : e)
      $('user-info').className = 'error'
    }
  })()
})

if (apiKey) void signIn(apiKey)
else show(false)
