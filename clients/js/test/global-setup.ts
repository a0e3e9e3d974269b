import { assertBinary } from './helpers/herald.js'

/** Fails the whole run early, with the fix, when the server binary is missing. */
export default function setup(): void {
  assertBinary()
}
