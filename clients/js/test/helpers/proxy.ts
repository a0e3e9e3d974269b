/**
 * A small HTTP + WebSocket proxy in front of a Herald server, so tests can cut
 * the WebSocket (refuse upgrades, drop or freeze live sockets) while plain
 * HTTP — the polling fallback — keeps working.
 */
import { createServer, request, type IncomingMessage, type Server } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'

interface Pair {
  client: Socket
  upstream: Socket
  frozen: boolean
}

export interface Proxy {
  origin: string
  wsUrl: string
  /** Upgrade requests seen, refused ones included. */
  readonly upgrades: number
  /** Plain HTTP requests forwarded. */
  readonly requests: number
  /** Live proxied WebSockets. */
  readonly sockets: number
  setTarget(origin: string): void
  /** Refuse (on) or allow (off) new WebSocket upgrades. */
  blockUpgrades(on: boolean): void
  /** Refuse (on) or allow (off) plain HTTP (polling) requests. */
  blockHttp(on: boolean): void
  /** Destroys every live proxied WebSocket, as a network cut would. */
  dropSockets(): void
  /** Stops forwarding on every live WebSocket without closing it (a dead peer). */
  freezeSockets(): void
  close(): Promise<void>
}

export async function startProxy(targetOrigin: string): Promise<Proxy> {
  let target = new URL(targetOrigin)
  let upgradesBlocked = false
  let httpBlocked = false
  let upgrades = 0
  let requests = 0
  const pairs = new Set<Pair>()

  const server: Server = createServer((req, res) => {
    if (httpBlocked) {
      req.socket.destroy()
      return
    }
    requests++
    const up = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers)
        upRes.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    res.on('close', () => up.destroy())
    req.pipe(up)
  })

  server.on('upgrade', (req: IncomingMessage, client: Socket, head: Buffer) => {
    upgrades++
    if (upgradesBlocked) {
      client.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
      return
    }
    const upstream = connect(Number(target.port), target.hostname)
    const pair: Pair = { client, upstream, frozen: false }
    pairs.add(pair)
    const lines = [`${req.method} ${req.url} HTTP/1.1`]
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`)
    upstream.on('connect', () => {
      upstream.write(lines.join('\r\n') + '\r\n\r\n')
      if (head.length) upstream.write(head)
    })
    upstream.on('data', (b) => {
      if (!pair.frozen) client.write(b)
    })
    client.on('data', (b) => {
      if (!pair.frozen) upstream.write(b)
    })
    const end = () => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    upstream.on('close', end)
    client.on('close', end)
    upstream.on('error', end)
    client.on('error', end)
  })

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    origin: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    get upgrades() {
      return upgrades
    },
    get requests() {
      return requests
    },
    get sockets() {
      return pairs.size
    },
    setTarget(origin) {
      target = new URL(origin)
    },
    blockUpgrades(on) {
      upgradesBlocked = on
    },
    blockHttp(on) {
      httpBlocked = on
    },
    dropSockets() {
      for (const p of [...pairs]) {
        pairs.delete(p)
        p.client.destroy()
        p.upstream.destroy()
      }
    },
    freezeSockets() {
      for (const p of pairs) p.frozen = true
    },
    close() {
      for (const p of [...pairs]) {
        p.client.destroy()
        p.upstream.destroy()
      }
      server.closeAllConnections()
      return new Promise((r) => server.close(() => r()))
    },
  }
}
