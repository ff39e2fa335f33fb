// Example latchkey provider in JavaScript (componentize-js / StarlingMonkey).
//
// Checks that an API key has the configured prefix and a plausible length, and
// reports one permission. Real providers call their service with fetch() (which
// componentize-js maps to wasi:http, so the host's allow-list applies).

import { log } from 'latchkey:provider/log@0.1.0';

function get(fields, name) {
  const f = fields.find((f) => f.name === name);
  return f === undefined ? undefined : f.value;
}

export const provider = {
  info() {
    return {
      name: 'example-js',
      version: '0.1.0',
      kinds: ['api-key'],
      operations: ['validate'],
      httpAuthorities: [],
      sqlConnections: [],
    };
  },

  validate(config, cred) {
    const prefix = get(config, 'prefix') ?? '';
    const key = get(cred.fields, 'key');
    if (key === undefined) {
      // A thrown value becomes the `err` of the result: a provider-error variant.
      throw { tag: 'invalid-config', val: 'credential has no field key' };
    }
    // Log lengths, never values.
    log('debug', `checking key of length ${key.length}`);
    const valid = key.startsWith(prefix) && key.length >= prefix.length + 16;
    return {
      valid,
      detail: valid ? 'key has the expected shape' : 'key has the wrong shape',
      permissions: [{ name: 'read', granted: valid }],
      expiresAt: undefined,
    };
  },

  createPending(_config, _current) {
    throw { tag: 'unsupported', val: 'create-pending' };
  },

  retire(_config, _previous) {
    throw { tag: 'unsupported', val: 'retire' };
  },

  refresh(_config, _cred) {
    throw { tag: 'unsupported', val: 'refresh' };
  },
};
