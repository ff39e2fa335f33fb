// A latchkey provider in JavaScript for a token service, written with the latchkey SDK.
//
// The service (any server with this shape; the tests start one on loopback):
// - GET {base-url}/v1/token/introspect with `authorization: Bearer <access-token>`
//   answers 200 {"account": "…", "scopes": ["read", …], "expires_at": "<RFC 3339>"}
//   for a working token, 401 or 403 for a refused one;
// - POST {base-url}/v1/token/refresh with JSON {"refresh_token": "…"} answers
//   200 {"access_token": "…", "refresh_token": "…", "expires_in": 3600}.
//
// Credential kind `access-token` with fields `access-token` and `refresh-token`.
// Config: `base-url` (required), `timeout` (seconds per request, default 10).
//
// Every contract answer is reachable: valid/invalid from validate; `unavailable` for
// 408/429/5xx, timeouts and network failures; `rejected` for a refused refresh token;
// `denied` when the host refuses the destination; `invalid-config` for a missing
// base-url or credential field; `unsupported` for rotation, which this service does
// not offer.

import { clock, config, errors, http, info, log, validate, credential } from '@latchkey/plugin-sdk';

const KIND = 'access-token';

function settings(cfg) {
  const base = validate.baseUrl(cfg);
  const timeout = Number(config.get(cfg, 'timeout', '10'));
  if (!(timeout > 0 && timeout <= 300)) {
    throw errors.invalidConfig('config timeout must be a number of seconds between 0 and 300');
  }
  return { base, timeout };
}

export const provider = {
  info() {
    return info({ name: 'example-js', version: '0.2.0', kinds: [KIND], operations: ['validate', 'refresh'] });
  },

  validate(cfg, cred) {
    validate.requireKind(cred, [KIND]);
    const { base, timeout } = settings(cfg);
    const token = config.requireField(cred, 'access-token');
    const req = http.get(`${base}/v1/token/introspect`).bearer(token).timeout(timeout);
    const answer = validate.check(req, { secrets: [token] });
    if (!answer.accepted) return validate.invalid(`token service refused the token: ${answer.reason}`);
    const body = answer.response.json();
    if (!body || typeof body !== 'object') {
      throw errors.unavailable('token service sent an unexpected introspection answer');
    }
    const scopes = (Array.isArray(body.scopes) ? body.scopes : []).filter((s) => typeof s === 'string');
    const expiresAt = typeof body.expires_at === 'string' ? clock.parseRfc3339(body.expires_at) : undefined;
    log.debug(`token introspected: ${scopes.length} scopes, ${answer.response.body.length} bytes`);
    const account = typeof body.account === 'string' ? body.account : 'unknown';
    return validate.valid(`token accepted for account ${validate.redact(account, [token])}`, {
      permissions: Object.fromEntries(scopes.map((s) => [s, true])),
      expiresAt,
    });
  },

  createPending(_cfg, _current) {
    throw errors.unsupported('create-pending: the token service issues tokens only by refresh');
  },

  retire(_cfg, _previous) {
    throw errors.unsupported('retire: the token service has no revocation endpoint');
  },

  refresh(cfg, cred) {
    validate.requireKind(cred, [KIND]);
    const { base, timeout } = settings(cfg);
    const refreshToken = config.requireField(cred, 'refresh-token');
    const res = http
      .post(`${base}/v1/token/refresh`)
      .json({ refresh_token: refreshToken })
      .timeout(timeout)
      .send();
    if (!res.ok) {
      // 400/401: the refresh token is refused (the host marks the credential
      // reauth-required); 408/429/5xx: retried with backoff.
      throw validate.statusError(res, { secrets: [refreshToken] });
    }
    const body = res.json();
    if (!body || typeof body.access_token !== 'string' || body.access_token === '') {
      throw errors.unavailable('token service answered a refresh without access_token');
    }
    const fields = { 'access-token': body.access_token };
    if (typeof body.refresh_token === 'string') fields['refresh-token'] = body.refresh_token; // else the host keeps the old one
    const expiresAt =
      Number.isInteger(body.expires_in) && body.expires_in > 0 ? clock.nowSecs() + BigInt(body.expires_in) : undefined;
    log.info('token refreshed');
    return credential(KIND, fields, expiresAt);
  },
};
