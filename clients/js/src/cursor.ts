/**
 * A stream position (`"{epoch}:{offset}"`) and the rule that makes delivery
 * exactly-once across transports: a message is handed to the app only when it
 * is past the position, whichever transport (socket or poll) brought it.
 */

export interface Cursor {
  epoch: string
  offset: number
}

/** Parses `"epoch:offset"`; the epoch is opaque, so split on the last colon. */
export function parseCursor(s: string): Cursor | null {
  const i = s.lastIndexOf(':')
  if (i < 0) return null
  const offset = Number(s.slice(i + 1))
  if (!Number.isSafeInteger(offset) || offset < 0) return null
  return { epoch: s.slice(0, i), offset }
}

export function formatCursor(c: Cursor): string {
  return `${c.epoch}:${c.offset}`
}

/** The position of one stream (a channel or the notification inbox). */
export class Position {
  private pos: Cursor | null = null

  /** The cursor to resume from, or null before the first position is known. */
  get cursor(): string | null {
    return this.pos ? formatCursor(this.pos) : null
  }

  /**
   * True when the message at `cursor` is new: past the position, or from a new
   * epoch (history was lost; the gap was reported separately). Advances.
   */
  accept(cursor: string): boolean {
    const c = parseCursor(cursor)
    if (!c) return false
    if (this.pos && c.epoch === this.pos.epoch && c.offset <= this.pos.offset) return false
    this.pos = c
    return true
  }

  /**
   * Set from a `subscribed`/`connected` answer: `missed` messages follow that
   * end at `cursor`, so the position is `cursor - missed`.
   */
  resetFromHead(cursor: string, missed: number): void {
    const c = parseCursor(cursor)
    if (!c) return
    this.pos = { epoch: c.epoch, offset: Math.max(0, c.offset - (missed || 0)) }
  }

  /** Moves forward to a poll answer's resume cursor; never backwards in one epoch. */
  advanceTo(cursor: string): void {
    const c = parseCursor(cursor)
    if (!c) return
    if (this.pos && c.epoch === this.pos.epoch && c.offset <= this.pos.offset) return
    this.pos = c
  }
}
