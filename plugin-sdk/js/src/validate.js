// Building `validate` answers, and checking an API key with one request.
//
// Most services validate a key with their cheapest authenticated call. `check()` sends
// such a request and sorts the answer:
//
//   the service answers                  check() gives
//   2xx                                  { accepted: true, response }
//   401, 403 (or what `refuses` says)    { accepted: false, reason }: answer invalid(…),
//                                        a validation, not an error
//   408, 429, 5xx, network, timeout      throws `unavailable`
//   the host refused the destination     throws `denied`
//   any other status                     throws `rejected`
//
// Service text (error messages) can echo the key, whole or masked (`sk-abc***xyz`):
// every reason and error built here goes through `redact()` first.
//
//   const key = validate.apiKey(cred);
//   const answer = validate.check(http.get(`${base}/v1/me`).bearer(key), { secrets: [key] });
//   if (!answer.accepted) return validate.invalid(`Example refused the key: ${answer.reason}`);
//   return validate.valid('key accepted', { permissions: { read: true } });

import * as config from './config.js';
import { fromStatus, invalidConfig, ProviderError, unsupported } from './errors.js';

export { redact } from './redact.js';
import { redact } from './redact.js';

/** Sends `request` (which already carries the credential) and sorts the answer. */
export const check = (request, { secrets = [], refuses = undefined } = {}) =>
  sort(request.send(), { secrets, refuses });

/** The decision behind `check()`, for a response already received. */
export function sort(response, { secrets = [], refuses = undefined } = {}) {
  if (response.ok) return { accepted: true, response, reason: '' };
  if ((refuses && refuses(response)) || response.status === 401 || response.status === 403) {
    const said = errorMessage(response);
    return { accepted: false, response, reason: `${response.status}${said ? `: ${redact(said, secrets)}` : ''}` };
  }
  throw statusError(response, { secrets });
}

/** The error for a non-2xx answer to any call: `unavailable` for 408/429/5xx,
 * `rejected` otherwise, with the service's message redacted of `secrets`. */
export function statusError(response, { secrets = [] } = {}) {
  const said = errorMessage(response);
  const tag = fromStatus(response.status).tag;
  return new ProviderError(tag, `service answered ${response.status}${said ? `: ${redact(said, secrets)}` : ''}`);
}

/** The service's own words from a JSON error body (`{"error": {"message", "code" |
 * "type" | "status"}}`, `{"message": …}`, `{"error": "…"}`); not redacted. */
export function errorMessage(response) {
  let body;
  try {
    body = JSON.parse(new TextDecoder().decode(response.body));
  } catch {
    return undefined;
  }
  if (!body || typeof body !== 'object') return undefined;
  let message;
  let code;
  const err = body.error;
  if (typeof err === 'string') message = err;
  else if (err && typeof err === 'object') {
    if (typeof err.message === 'string') message = err.message;
    code = ['code', 'type', 'status'].map((k) => err[k]).find((c) => typeof c === 'string');
  } else if (typeof body.message === 'string') message = body.message;
  if (typeof body.error_description === 'string' && message !== undefined) {
    message = `${message}: ${body.error_description}`; // RFC 6749 §5.2
  }
  if (code && message) return `${code}: ${message}`;
  return message ?? code;
}

/** `{ read: true, withdraw: false }` (or pairs) as validation permissions. */
export function permissions(granted) {
  if (!granted) return [];
  const items = Array.isArray(granted) ? granted : Object.entries(granted);
  return items.map(([name, g]) => ({ name, granted: Boolean(g) }));
}

/** The answer for a credential the service accepted. */
export const valid = (detail, { permissions: p = undefined, expiresAt = undefined } = {}) => ({
  valid: true,
  detail,
  permissions: permissions(p),
  expiresAt: expiresAt === undefined ? undefined : BigInt(expiresAt),
});

/** The answer for a credential the service refused (`valid: false`). */
export const invalid = (detail, { permissions: p = undefined } = {}) => ({
  valid: false,
  detail,
  permissions: permissions(p),
  expiresAt: undefined,
});

/** The key of an API-key credential: field `api-key`, or its alias `key`. Missing or
 * empty is `invalid-config` (naming the field, never a value). */
export function apiKey(cred) {
  const key = config.field(cred, 'api-key') ?? config.field(cred, 'key');
  if (key === undefined) throw invalidConfig('credential has no field api-key (or key)');
  if (key.trim() === '') throw invalidConfig('credential field api-key is empty');
  return key;
}

/** `unsupported` unless the credential's kind is one of `kinds`. */
export function requireKind(cred, kinds) {
  if (!kinds.includes(cred.kind)) {
    throw unsupported(`credential kind ${JSON.stringify(cred.kind)} (this provider handles ${kinds.join(', ')})`);
  }
}

/** Config `base-url` without trailing slashes (`fallback` when unset); missing, or not
 * an http:// or https:// URL, is `invalid-config`. */
export function baseUrl(cfg, fallback = undefined) {
  const url = (config.get(cfg, 'base-url') ?? fallback ?? '').trim();
  if (!url) throw invalidConfig('missing config base-url');
  if (!/^https?:\/\//.test(url)) throw invalidConfig('config base-url must start with https:// or http://');
  return url.replace(/\/+$/, '');
}
