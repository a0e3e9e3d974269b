/** An in-process WebSocket stand-in for unit tests of the client's state machine. */
export class FakeSocket {
  static instances: FakeSocket[] = []
  static reset(): void {
    FakeSocket.instances = []
  }
  static last(): FakeSocket {
    const s = FakeSocket.instances[FakeSocket.instances.length - 1]
    if (!s) throw new Error('no socket opened')
    return s
  }

  readyState = 0
  sent: Array<Record<string, unknown>> = []
  closedWith: number | null = null
  onopen: ((ev: unknown) => void) | null = null
  onmessage: ((ev: { data: unknown }) => void) | null = null
  onclose: ((ev: { code: number; reason: string }) => void) | null = null
  onerror: ((ev: unknown) => void) | null = null

  constructor(readonly url: string) {
    FakeSocket.instances.push(this)
  }
  send(s: string): void {
    this.sent.push(JSON.parse(s) as Record<string, unknown>)
  }
  close(code = 1000): void {
    this.closedWith = code
    this.readyState = 3
  }
  // ---- server side
  open(): void {
    this.readyState = 1
    this.onopen?.({})
  }
  push(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) })
  }
  serverClose(code: number, reason = ''): void {
    this.readyState = 3
    this.onclose?.({ code, reason })
  }
  /** Completes the handshake: open, then answer the connect frame. */
  accept(extra: Record<string, unknown> = {}): void {
    this.open()
    const c = this.sent.find((f) => f.type === 'connect')
    this.push({ type: 'connected', id: c?.id, client: 'c1', ping_interval: 25, ...extra })
  }
  ofType(type: string): Array<Record<string, unknown>> {
    return this.sent.filter((f) => f.type === type)
  }
}
