/**
 * Reads a JWT's `exp` without verifying it (the server verifies); used only to
 * refresh a token before it expires.
 */

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

function base64UrlDecode(s: string): string {
  let bits = 0
  let value = 0
  const bytes: number[] = []
  for (const ch of s.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_')) {
    const v = ALPHABET.indexOf(ch)
    if (v < 0) throw new Error('bad base64url')
    value = (value << 6) | v
    bits += 6
    if (bits >= 8) {
      bits -= 8
      bytes.push((value >> bits) & 0xff)
    }
  }
  // Tokens' payloads are UTF-8 JSON; decode multi-byte sequences properly.
  let out = ''
  for (let i = 0; i < bytes.length; i++) out += '%' + bytes[i]!.toString(16).padStart(2, '0')
  return decodeURIComponent(out)
}

/** The token's `exp` in Unix milliseconds, or null when absent or unreadable. */
export function tokenExpiry(token: string): number | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]!)) as { exp?: unknown }
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null
  } catch {
    return null
  }
}

/**
 * How long before expiry to refresh: a fifth of the token's remaining life,
 * between 1 s and 60 s, so short test tokens and hour-long ones both work.
 */
export function refreshDelay(expiresAt: number, now: number): number {
  const life = expiresAt - now
  const margin = Math.min(60_000, Math.max(1_000, life / 5))
  return Math.max(0, life - margin)
}
