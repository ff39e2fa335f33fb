// The latchkey SDK for providers written in JavaScript (componentize-js).
//
// Helpers over the plugin contract in wit/ (world `provider-plugin`), the same as the
// Rust SDK's: `http` (blocking wasi:http with JSON, headers, timeouts and bodies of any
// size), `config` (fields with clear missing-key errors), `errors` (the contract's
// variants), `validate` (answers, one-request key checks, redaction), `sign`
// (HMAC-SHA256/512, SHA-2, hex, base64), `clock` (wall clock, randomness, RFC 3339)
// and `log`. Bundle a provider that imports it with `build.mjs` beside this package.

export * as clock from './clock.js';
export * as config from './config.js';
export * as errors from './errors.js';
export * as http from './http.js';
export * as log from './log.js';
export * as sign from './sign.js';
export * as validate from './validate.js';
export { ProviderError } from './errors.js';
export { HttpError } from './http.js';

const OPERATIONS = ['validate', 'create-pending', 'retire', 'refresh'];

/** The `info` answer; operations by their WIT names (`'create-pending'`). */
export function info({ name, version, kinds, operations, httpAuthorities = [], sqlConnections = [] }) {
  for (const op of operations) {
    if (!OPERATIONS.includes(op)) throw new RangeError(`unknown operation ${op}: one of ${OPERATIONS.join(', ')}`);
  }
  return { name, version, kinds: [...kinds], operations: [...operations], httpAuthorities, sqlConnections };
}

/** A credential of `kind` from an object of field values (e.g. what `refresh`
 * returns); the host copies over fields it does not return. */
export const credential = (kind, fields, expiresAt = undefined) => ({
  kind,
  fields: Object.entries(fields).map(([name, value]) => ({ name, value })),
  expiresAt: expiresAt === undefined ? undefined : BigInt(expiresAt),
});
