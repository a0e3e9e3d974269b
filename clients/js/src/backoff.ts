/**
 * Exponential backoff with full jitter: attempt n waits a uniformly random time
 * in [0, min(max, min * 2^n)]. Full jitter spreads a reconnect storm over the
 * whole window instead of synchronising every client on the same instants.
 */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(Math.max(attempt, 0), 30))
  return Math.floor(random() * ceiling)
}
