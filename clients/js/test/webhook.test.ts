/**
 * verifyWebhook / verifyWebhookAsync (herald-realtime/server): the
 * `Herald-Signature` scheme of SPEC §11, checked against signatures this test
 * computes itself with node:crypto, and every way a request must be refused.
 */
import { createHmac } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  verifyWebhook,
  verifyWebhookAsync,
  WebhookVerificationError,
  type VerifyWebhookOptions,
  type WebhookEvent,
} from '../src/server.js'

const SECRET = 'whk-secret-0123456789'
const T = 1_764_100_000
const BODY = JSON.stringify({
  id: 'n1-42',
  event: 'notification_undelivered',
  ts: T * 1000,
  data: { userId: 'user-123', offset: 7, cursor: 'u9Xk:7', data: { title: 'Venue Updated', emoji: 'éß🎉' } },
})

/** The header Herald sends, computed here independently of the SDK. */
function sign(body: string | Buffer, secret = SECRET, t = T): string {
  const v1 = createHmac('sha256', secret).update(`${t}.`).update(body).digest('hex')
  return `t=${t},v1=${v1}`
}

const at = { now: T + 10 } satisfies VerifyWebhookOptions

type Verify = (
  body: string | Uint8Array,
  header: string | null | undefined,
  secret: string,
  options?: VerifyWebhookOptions,
) => Promise<WebhookEvent>

const variants: Array<[string, Verify]> = [
  ['verifyWebhook (node:crypto)', async (...a) => verifyWebhook(...a)],
  ['verifyWebhookAsync (Web Crypto)', (...a) => verifyWebhookAsync(...a)],
]

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (err) {
    expect(err).toBeInstanceOf(WebhookVerificationError)
    return (err as WebhookVerificationError).reason
  }
  throw new Error('verified, but should have been refused')
}

describe.each(variants)('%s', (_name, verify) => {
  it('accepts a genuine request and returns the parsed body (string or bytes)', async () => {
    const event = await verify(BODY, sign(BODY), SECRET, at)
    expect(event).toEqual(JSON.parse(BODY))
    expect(event.event).toBe('notification_undelivered')
    const bytes = new Uint8Array(Buffer.from(BODY, 'utf8'))
    expect((await verify(bytes, sign(Buffer.from(BODY, 'utf8')), SECRET, at)).id).toBe('n1-42')
  })

  it('matches a fixed vector: HMAC-SHA256("42.hello") keyed "Jefe"', async () => {
    // The same construction the server's own unit test pins (crates/herald-server/src/webhooks/sign.rs).
    const v1 = createHmac('sha256', 'Jefe').update('42.{"id":"x"}').digest('hex')
    await expect(verify('{"id":"x"}', `t=42,v1=${v1}`, 'Jefe', { now: 42 })).resolves.toEqual({ id: 'x' })
    expect(createHmac('sha256', 'Jefe').update('what do ya want for nothing?').digest('hex')).toBe(
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    )
  })

  it('refuses a tampered body, the wrong secret, and a signature over another time', async () => {
    const header = sign(BODY)
    expect(await reason(verify(BODY.replace('user-123', 'user-124'), header, SECRET, at))).toBe('no_matching_signature')
    expect(await reason(verify(`${BODY} `, header, SECRET, at))).toBe('no_matching_signature')
    expect(await reason(verify(BODY, header, 'another-secret-000', at))).toBe('no_matching_signature')
    // The MAC covers t: moving t (to pass the tolerance) breaks it.
    const moved = header.replace(`t=${T}`, `t=${T + 5}`)
    expect(await reason(verify(BODY, moved, SECRET, at))).toBe('no_matching_signature')
  })

  it('refuses a timestamp outside the tolerance, either way, and honours toleranceSeconds', async () => {
    const header = sign(BODY)
    expect(await reason(verify(BODY, header, SECRET, { now: T + 301 }))).toBe('timestamp_out_of_tolerance')
    expect(await reason(verify(BODY, header, SECRET, { now: T - 301 }))).toBe('timestamp_out_of_tolerance')
    await expect(verify(BODY, header, SECRET, { now: T + 300 })).resolves.toMatchObject({ id: 'n1-42' })
    expect(await reason(verify(BODY, header, SECRET, { now: T + 11, toleranceSeconds: 10 }))).toBe(
      'timestamp_out_of_tolerance',
    )
    await expect(verify(BODY, header, SECRET, { now: new Date((T + 60) * 1000) })).resolves.toMatchObject({ id: 'n1-42' })
    // Default: the real clock; a signature made now passes, one from an hour ago does not.
    const now = Math.floor(Date.now() / 1000)
    await expect(verify(BODY, sign(BODY, SECRET, now), SECRET)).resolves.toMatchObject({ id: 'n1-42' })
    expect(await reason(verify(BODY, sign(BODY, SECRET, now - 3600), SECRET))).toBe('timestamp_out_of_tolerance')
  })

  it('accepts any of several v1 entries (secret rotation), in any order', async () => {
    const good = sign(BODY).split(',')[1]!
    const old = sign(BODY, 'the-previous-secret!').split(',')[1]!
    await expect(verify(BODY, `t=${T},${old},${good}`, SECRET, at)).resolves.toMatchObject({ id: 'n1-42' })
    await expect(verify(BODY, `t=${T}, ${good} ,v1=deadbeef`, SECRET, at)).resolves.toMatchObject({ id: 'n1-42' })
    await expect(verify(BODY, `t=${T},${old},${good}`, 'the-previous-secret!', at)).resolves.toMatchObject({
      id: 'n1-42',
    })
    // Unknown schemes are ignored, not trusted.
    expect(await reason(verify(BODY, `t=${T},v0=${good.slice(3)}`, SECRET, at))).toBe('malformed_header')
  })

  it('refuses a missing or malformed header and a body that is not a JSON object', async () => {
    expect(await reason(verify(BODY, null, SECRET, at))).toBe('missing_header')
    expect(await reason(verify(BODY, '', SECRET, at))).toBe('missing_header')
    const v1 = sign(BODY).split(',')[1]!
    expect(await reason(verify(BODY, v1, SECRET, at))).toBe('malformed_header')
    expect(await reason(verify(BODY, `t=${T}`, SECRET, at))).toBe('malformed_header')
    expect(await reason(verify(BODY, `t=soon,${v1}`, SECRET, at))).toBe('malformed_header')
    expect(await reason(verify(BODY, `t=${T},t=${T},${v1}`, SECRET, at))).toBe('malformed_header')
    expect(await reason(verify('[1]', sign('[1]'), SECRET, at))).toBe('malformed_body')
    await expect(verify(BODY, sign(BODY), '', at)).rejects.toBeInstanceOf(TypeError)
  })
})

describe('the example in docs/backend-hooks.md', () => {
  it('is a real signature of the body shown, with the secret shown', async () => {
    const body = '{"id":"n1-8f3a","event":"user_offline","ts":1764100000123,"data":{"userId":"user-123"}}'
    const header = 't=1764100000,v1=dd5d3b3daca7329a424b82b0e02928488cc592d90c18507430c047555f3fc6ed'
    expect(verifyWebhook(body, header, 'another-long-random-string', { now: 1764100000 })).toMatchObject({
      event: 'user_offline',
      data: { userId: 'user-123' },
    })
    const { readFileSync } = await import('node:fs')
    const doc = readFileSync(new URL('../../../docs/backend-hooks.md', import.meta.url), 'utf8')
    expect(doc).toContain(body)
    expect(doc).toContain(header)
  })
})
