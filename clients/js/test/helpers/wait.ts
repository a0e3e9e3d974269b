/** Bounded waiting: poll a condition until it holds or the deadline passes. */
export async function waitFor<T>(
  check: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  what: string,
  timeoutMs = 10_000,
  everyMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await check()
      if (v) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`)
    }
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/** Records every state a client goes through. */
export function recordStates(client: { on(e: 'state', fn: (s: string) => void): () => void; state: string }): string[] {
  const states = [client.state]
  client.on('state', (s) => states.push(s))
  return states
}
