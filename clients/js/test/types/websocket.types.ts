/**
 * Type tests (checked by `npm run typecheck`, under `strict`): the
 * `webSocket` option takes the real WebSocket classes of each platform
 * without a cast — the README's own Node example among them.
 */
import WebSocketFromWs from 'ws'
import { RealtimeClient } from '../../src/client.js'
import { RealtimeService } from '../../src/service.js'
import type { RealtimeOptions } from '../../src/types.js'

// Node, with `ws` (the README's example).
export const node: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: WebSocketFromWs }
export const nodeService = new RealtimeService({ url: 'ws://localhost:8080/ws', webSocket: WebSocketFromWs })

// The browser's own class (lib.dom), and Node 22's global one.
export const browser: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: WebSocket }
export const browserClient = new RealtimeClient({ url: 'ws://localhost:8080/ws', webSocket: globalThis.WebSocket })

// React Native's class, as react-native's own typings declare it
// (Libraries/WebSocket/WebSocket.d.ts, 0.72–0.81).
interface WebSocketMessageEvent extends Event {
  data?: any
}
interface WebSocketErrorEvent extends Event {
  message: string
}
interface WebSocketCloseEvent extends Event {
  code?: number
  reason?: string
  message?: string
}
declare class ReactNativeWebSocket {
  constructor(uri: string, protocols?: string | string[] | null, options?: { headers: { [headerName: string]: string }; [optionName: string]: any } | null)
  readonly CLOSED: number
  readonly CLOSING: number
  readonly CONNECTING: number
  readonly OPEN: number
  readonly readyState: number
  close(code?: number, reason?: string): void
  send(data: string | ArrayBuffer | ArrayBufferView | Blob): void
  onopen: (() => void) | null
  onmessage: ((event: WebSocketMessageEvent) => void) | null
  onerror: ((event: WebSocketErrorEvent) => void) | null
  onclose: ((event: WebSocketCloseEvent) => void) | null
}
export const reactNative: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: ReactNativeWebSocket }

// Not anything: a class without the socket surface is still refused.
class NotASocket {
  constructor(readonly url: string) {}
}
// @ts-expect-error -- no readyState, send, close or handlers
export const refused: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: NotASocket }
