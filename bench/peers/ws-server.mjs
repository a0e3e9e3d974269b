// A plain Node.js `ws` server doing what `herald bench` asks of Herald:
// `connect` → `connected`, `subscribe` → `subscribed` (with a cursor), and
// each published message sent to every subscriber of its channel, the frame
// encoded once. No history, no auth beyond the API key, no limits: the
// lightest server that can run the same scenarios, for comparison.
import { WebSocketServer } from 'ws'
import { Channels, httpApi, listen } from './common.mjs'

const channels = new Channels()
const rooms = new Map() // channel → Set<WebSocket>

const server = httpApi((channel, data) => {
  const { offset, frame } = channels.next(channel, data)
  for (const ws of rooms.get(channel) ?? []) ws.send(frame)
  return offset
})
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false })
wss.on('connection', (ws) => {
  const joined = new Set()
  ws.on('message', (raw) => {
    let cmd
    try {
      cmd = JSON.parse(String(raw))
    } catch {
      return ws.close(1007)
    }
    if (cmd.type === 'connect') {
      ws.send(JSON.stringify({ type: 'connected', id: cmd.id, client: 'ws', ping_interval: 25 }))
    } else if (cmd.type === 'subscribe') {
      if (!rooms.has(cmd.channel)) rooms.set(cmd.channel, new Set())
      rooms.get(cmd.channel).add(ws)
      joined.add(cmd.channel)
      const top = channels.top(cmd.channel)
      ws.send(JSON.stringify({ type: 'subscribed', id: cmd.id, channel: cmd.channel, cursor: `e:${top}`, recovered: true, missed: 0 }))
    }
  })
  ws.on('close', () => {
    for (const c of joined) rooms.get(c)?.delete(ws)
  })
})
listen(server, 'ws peer')
