/**
 * The /realtime-demo page (SPEC §8): a RealtimeService on the page's own
 * origin, showing its state (and a "polling" badge on the fallback), channel
 * subscriptions, publishing over the socket, and messages and notifications as
 * they arrive. Query parameters preset it: `?user=alice&channels=a,b&token=…`,
 * and the service options (`fallbackAfter`, `minReconnectDelay`, …) for tests.
 * The page asks `/health` whether the server runs in dev mode: only then does
 * it preset the user `alice` (a production server refuses a user without a
 * token); otherwise it connects anonymously, or with a pasted token.
 * Beside each channel it shows who is subscribed (namespaces with
 * `presence`), read at each (re)subscription and kept live by join/leave.
 */
import { applyPresenceEvent } from '../presence.js'
import { RealtimeService } from '../service.js'
import type { MessageMeta, NotificationMeta, PresenceEntry, PresenceInfo, RealtimeOptions } from '../types.js'

const MAX_ROWS = 200
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T

const params = new URLSearchParams(location.search)
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`
const apiUrl = location.origin
$('ws-url').textContent = wsUrl
$('api-url').textContent = apiUrl

const userInput = $<HTMLInputElement>('user')
const tokenInput = $<HTMLInputElement>('token')
userInput.value = params.get('user') ?? ''
tokenInput.value = params.get('token') ?? ''

const tuning: Partial<RealtimeOptions> = {}
for (const key of ['minReconnectDelay', 'maxReconnectDelay', 'fallbackAfter', 'pollInterval', 'longPollWait'] as const) {
  const v = params.get(key)
  if (v !== null && v !== '' && Number.isFinite(Number(v))) tuning[key] = Number(v)
}

let service: RealtimeService | null = null
const subscriptions = new Map<string, () => void>()
/** Who is in each channel, or why the page cannot say. */
const presence = new Map<string, PresenceInfo | string>()
const offService: Array<() => void> = []
let messageCount = 0
let notificationCount = 0

function prepend(list: HTMLElement, li: HTMLElement): void {
  list.insertBefore(li, list.firstChild)
  while (list.childElementCount > MAX_ROWS) list.lastElementChild!.remove()
}

function row(text: string, attrs: Record<string, string> = {}, cls = ''): HTMLLIElement {
  const li = document.createElement('li')
  li.textContent = text
  if (cls) li.className = cls
  for (const [k, v] of Object.entries(attrs)) li.dataset[k] = v
  return li
}

function logEvent(text: string, cls = ''): void {
  prepend($('events'), row(`${new Date().toLocaleTimeString()} ${text}`, {}, cls))
}

function showState(state: string): void {
  const badge = $('state')
  badge.textContent = state
  badge.dataset.state = state
  $('polling').hidden = state !== 'polling'
  document.body.dataset.state = state
}

function onMessage(data: unknown, meta: MessageMeta): void {
  messageCount++
  $('message-count').textContent = String(messageCount)
  prepend(
    $('messages'),
    row(`${meta.channel} #${meta.offset} ${JSON.stringify(data)}`, { channel: meta.channel, offset: String(meta.offset) }),
  )
}

function onNotification(data: unknown, meta: NotificationMeta): void {
  notificationCount++
  $('notification-count').textContent = String(notificationCount)
  prepend($('notifications'), row(`#${meta.offset} ${JSON.stringify(data)}`, { offset: String(meta.offset) }))
}

function describePresence(p: PresenceInfo | string | undefined): string {
  if (p === undefined) return ''
  if (typeof p === 'string') return p
  const names = p.clients.map((c) => c.user || `anonymous ${c.client}`)
  const more = p.total > p.clients.length ? ` and ${p.total - p.clients.length} more` : ''
  return `${p.total} here (${p.users} users): ${names.join(', ')}${more}`
}

function readPresence(channel: string): void {
  if (!service || !subscriptions.has(channel)) return
  service.presence(channel).then(
    (p) => {
      if (!subscriptions.has(channel)) return
      presence.set(channel, p)
      renderChannels()
    },
    (err: { code?: number }) => {
      presence.set(channel, err.code === 1012 ? 'presence is off for this namespace' : '')
      renderChannels()
    },
  )
}

function onPresence(channel: string, kind: 'join' | 'leave', entry: PresenceEntry): void {
  logEvent(`${entry.user || `anonymous ${entry.client}`} ${kind === 'join' ? 'joined' : 'left'} ${channel}`)
  const p = presence.get(channel)
  if (p !== undefined && typeof p !== 'string') presence.set(channel, applyPresenceEvent(p, kind, entry))
  renderChannels()
}

function renderChannels(): void {
  const list = $('channels')
  list.replaceChildren()
  for (const channel of subscriptions.keys()) {
    const li = row('', { channel })
    const name = document.createElement('span')
    name.textContent = channel
    const who = document.createElement('small')
    who.className = 'presence'
    who.textContent = describePresence(presence.get(channel))
    const remove = document.createElement('button')
    remove.type = 'button'
    remove.textContent = '×'
    remove.title = `unsubscribe ${channel}`
    remove.addEventListener('click', () => unsubscribe(channel))
    li.append(name, remove, who)
    list.append(li)
  }
}

function subscribe(channel: string): void {
  if (!service || subscriptions.has(channel)) return
  try {
    subscriptions.set(
      channel,
      service.subscribe(channel, onMessage, {
        onJoin: (e) => onPresence(channel, 'join', e),
        onLeave: (e) => onPresence(channel, 'leave', e),
      }),
    )
  } catch (err) {
    logEvent(String((err as Error).message ?? err), 'error')
    return
  }
  renderChannels()
}

function unsubscribe(channel: string): void {
  subscriptions.get(channel)?.()
  subscriptions.delete(channel)
  presence.delete(channel)
  renderChannels()
}

function start(): void {
  stop()
  const options: RealtimeOptions = { url: wsUrl, apiUrl, ...tuning }
  if (userInput.value.trim()) options.user = userInput.value.trim()
  if (tokenInput.value.trim()) options.token = tokenInput.value.trim()
  service = new RealtimeService(options)
  ;(window as unknown as { herald: RealtimeService }).herald = service
  offService.push(
    service.on('state', (s) => {
      showState(s)
      logEvent(`state: ${s}`)
    }),
    service.onGap((g) => logEvent(`gap on ${g.channel ?? 'notifications'}: resumed at ${g.cursor}, refetch`, 'gap')),
    service.on('error', (e) => logEvent(`error ${e.code}${e.channel ? ` on ${e.channel}` : ''}: ${e.message}`, 'error')),
    service.onNotification(onNotification),
    // Joins and leaves missed while away are not replayed: read again.
    service.on('subscribed', (s) => readPresence(s.channel)),
  )
  const channels = [...subscriptions.keys()]
  subscriptions.clear()
  for (const c of channels) subscribe(c)
  service.connect()
}

function stop(): void {
  for (const off of offService.splice(0)) off()
  for (const unsub of subscriptions.values()) unsub()
  if (service) service.disconnect()
  for (const c of subscriptions.keys()) subscriptions.set(c, () => {})
  showState('disconnected')
}

$('connect-form').addEventListener('submit', (e) => {
  e.preventDefault()
  start()
})
$('disconnect').addEventListener('click', () => {
  stop()
  logEvent('state: disconnected')
})
$('subscribe-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = $<HTMLInputElement>('channel')
  subscribe(input.value.trim())
  if (!$('publish-channel').matches(':focus') && !$<HTMLInputElement>('publish-channel').value) {
    $<HTMLInputElement>('publish-channel').value = input.value.trim()
  }
  input.value = ''
})
$('publish-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const result = $('publish-result')
  let data: unknown
  try {
    data = JSON.parse($<HTMLTextAreaElement>('publish-data').value)
  } catch {
    result.textContent = 'data is not valid JSON'
    return
  }
  const channel = $<HTMLInputElement>('publish-channel').value.trim()
  if (!service) return
  result.textContent = '…'
  service.publish(channel, data).then(
    (r) => (result.textContent = `published ${r.channel} #${r.offset}`),
    (err: { code?: number; message?: string }) => (result.textContent = `failed: ${err.message ?? err} (${err.code ?? '?'})`),
  )
})

for (const c of (params.get('channels') ?? '').split(',').map((s) => s.trim()).filter(Boolean)) subscriptions.set(c, () => {})
const firstChannel = subscriptions.keys().next()
if (!firstChannel.done) $<HTMLInputElement>('publish-channel').value = firstChannel.value
renderChannels()

/** Whether the server runs in dev mode (false when it cannot tell). */
async function devMode(): Promise<boolean> {
  try {
    const health = (await (await fetch(`${apiUrl}/health`)).json()) as { dev?: unknown }
    return health.dev === true
  } catch {
    return false
  }
}

void devMode().then((dev) => {
  if (dev && !params.has('user') && !tokenInput.value) userInput.value = 'alice'
  $('mode').textContent = dev
    ? 'Dev mode: any user name is accepted without a token.'
    : 'This server is not in dev mode: the page connects anonymously (public channels only) unless you paste a token.'
  start()
})
