// What both peer servers share: the slice of Herald's HTTP API that
// `herald bench fanout` and `herald bench idle` use (publish one message or a
// batch to a channel, with the API key as a bearer token), and per-channel
// offsets so the load generator can check for gaps as it does with Herald.
import { createServer } from 'node:http'

export const API_KEY = process.env.PEER_API_KEY ?? 'bench-api-key'

/** Per-channel offsets and the frame each publication becomes. */
export class Channels {
  constructor() {
    this.offsets = new Map()
  }
  top(channel) {
    return this.offsets.get(channel) ?? 0
  }
  /** The next publication on `channel`, as Herald's `message` frame (encoded once). */
  next(channel, data) {
    const offset = this.top(channel) + 1
    this.offsets.set(channel, offset)
    return {
      offset,
      frame: `{"type":"message","channel":${JSON.stringify(channel)},"offset":${offset},"cursor":"e:${offset}","ts":${Date.now()},"data":${data}}`,
    }
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

/**
 * An HTTP server answering `POST /api/channels/{c}/messages` (the body is
 * the data) and `POST /api/batch` (`{"items":[{"channel","data"}]}`), calling
 * `publish(channel, dataJson)` for each message, which returns its offset.
 */
export function httpApi(publish) {
  return createServer(async (req, res) => {
    try {
      if (req.method !== 'POST') return reply(res, 404, { error: 'not found' })
      if (req.headers.authorization !== `Bearer ${API_KEY}`) return reply(res, 401, { error: 'unauthorized' })
      const body = await readBody(req)
      const single = /^\/api\/channels\/([^/]+)\/messages$/.exec(req.url ?? '')
      if (single) {
        JSON.parse(body) // refuse what is not JSON, as Herald does
        const channel = decodeURIComponent(single[1])
        const offset = publish(channel, body)
        return reply(res, 200, { ok: true, channel, offset, cursor: `e:${offset}` })
      }
      if (req.url === '/api/batch') {
        const results = JSON.parse(body).items.map((item) => {
          const offset = publish(item.channel, JSON.stringify(item.data))
          return { ok: true, channel: item.channel, offset, cursor: `e:${offset}` }
        })
        return reply(res, 200, { results })
      }
      return reply(res, 404, { error: 'not found' })
    } catch (e) {
      return reply(res, 400, { error: String(e) })
    }
  })
}

export function listen(server, name) {
  const port = Number(process.env.PORT ?? 0)
  server.listen(port, '127.0.0.1', () => {
    console.log(`${name} listening on http://127.0.0.1:${server.address().port}`)
  })
}
