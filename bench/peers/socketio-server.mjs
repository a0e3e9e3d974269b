// A Socket.IO server doing what `herald bench --protocol socketio` asks:
// the client emits `subscribe` (a channel) and gets `subscribed` (with a
// cursor); each published message is emitted as `message` to the channel's
// room (Socket.IO encodes a broadcast once). WebSocket transport only, no
// compression, default settings otherwise.
import { Server } from 'socket.io'
import { Channels, httpApi, listen } from './common.mjs'

const channels = new Channels()
let io
const server = httpApi((channel, data) => {
  const { offset, frame } = channels.next(channel, data)
  // The same fields Herald sends, as the event's argument.
  io.to(channel).emit('message', JSON.parse(frame))
  return offset
})
io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false })
io.on('connection', (socket) => {
  socket.on('subscribe', (channel) => {
    socket.join(channel)
    socket.emit('subscribed', { channel, cursor: `e:${channels.top(channel)}` })
  })
})
listen(server, 'socket.io peer')
