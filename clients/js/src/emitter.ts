/** A minimal typed event emitter; listeners that throw do not stop the others. */
export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<(arg: never) => void>>()

  on<K extends keyof Events>(event: K, fn: (arg: Events[K]) => void): () => void {
    let set = this.listeners.get(event)
    if (!set) this.listeners.set(event, (set = new Set()))
    const entry = fn as (arg: never) => void
    set.add(entry)
    return () => {
      set.delete(entry)
    }
  }

  emit<K extends keyof Events>(event: K, arg: Events[K]): void {
    const set = this.listeners.get(event)
    if (!set) return
    for (const fn of [...set]) {
      try {
        ;(fn as (a: Events[K]) => void)(arg)
      } catch (err) {
        reportListenerError(err)
      }
    }
  }
}

/** App code that throws inside a handler must not break the SDK's read loop. */
export function reportListenerError(err: unknown): void {
  console.error('herald-realtime: a handler threw', err)
}
