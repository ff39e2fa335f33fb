// Time and randomness for providers: the host's wall clock (wasi:clocks), its random
// source (wasi:random), and RFC 3339 timestamps as services send them.
//
//   const expiresAt = clock.nowSecs() + BigInt(body.expires_in);
//   const nonce = clock.randomHex(16);
//
// Times are BigInt seconds, as the contract's `u64` fields (`expiresAt`) are. During a
// retried `create-pending` the host replays the same random bytes, so a secret drawn
// here is the same on the second attempt (see wit/provider.wit).

import { now as wallNow } from 'wasi:clocks/wall-clock@0.2.12';
import { getRandomBytes } from 'wasi:random/random@0.2.12';

export { parseRfc3339, rfc3339 } from './time.js';

/** Seconds since the Unix epoch (BigInt), from the host's wall clock. */
export const nowSecs = () => BigInt(wallNow().seconds);

/** Milliseconds since the Unix epoch (a Number; what exchanges sign as a timestamp). */
export function nowMs() {
  const t = wallNow();
  return Number(t.seconds) * 1000 + Math.floor(t.nanoseconds / 1e6);
}

/** `n` bytes from the host's cryptographically secure random source. */
export const randomBytes = (n) => getRandomBytes(BigInt(n));

/** `n` random bytes as lowercase hex (`2n` characters). */
export const randomHex = (n) => Array.from(randomBytes(n), (b) => b.toString(16).padStart(2, '0')).join('');

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** A random string of `length` characters from `alphabet`, unbiased. */
export function randomToken(length, alphabet = ALPHABET) {
  if (alphabet.length < 2 || alphabet.length > 256) throw new RangeError('alphabet must have 2 to 256 characters');
  const limit = 256 - (256 % alphabet.length);
  let out = '';
  while (out.length < length) {
    for (const b of randomBytes(length * 2)) {
      if (b < limit && out.length < length) out += alphabet[b % alphabet.length];
    }
  }
  return out;
}
