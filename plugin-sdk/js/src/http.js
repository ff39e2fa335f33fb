// Blocking HTTP over wasi:http, with JSON, headers, timeouts and bodies of any size.
//
// Requests go through the host, which lets a plugin reach only the authorities granted
// to it in the agent's configuration; anything else fails with `denied` (and the host
// audits it). The host also bounds each call with a deadline and caps response bodies.
//
//   const res = http.get(`${base}/v1/me`).bearer(token).timeout(5).send();
//   if (res.status === 401 || res.status === 403) { /* an answer about the credential */ }
//   const me = res.errorForStatus().json();   // 429/5xx -> unavailable, other -> rejected
//
// What this module does so that a provider need not:
// - request bodies are written in chunks of at most 4096 bytes (the most one
//   `blocking-write-and-flush` accepts) with `content-length` set, so the body never
//   goes out chunked;
// - the response body is read whole;
// - every wasi:http resource is released child first (headers, streams, bodies,
//   response, future), which the host requires: dropping a parent first traps;
// - one deadline (`timeout`, 30 s by default) covers connecting, the response head and
//   the whole body; the SDK polls the host's monotonic clock beside each wait.
//
// Unlike `fetch()`, this is synchronous, so provider exports (which are synchronous)
// can use it directly. Every failure throws an HttpError, which is also the right
// provider-error: letting it propagate answers `denied`, `unavailable` or `rejected`.

import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, IncomingBody, OutgoingBody, OutgoingRequest, RequestOptions } from 'wasi:http/types@0.2.12';
import { now, subscribeDuration } from 'wasi:clocks/monotonic-clock@0.2.12';
import { poll } from 'wasi:io/poll@0.2.12';

import { ProviderError, isTransientStatus } from './errors.js';

/** The most bytes one `blocking-write-and-flush` may carry (wasi:io 0.2). */
export const CHUNK = 4096;
/** Seconds a request may take, connect to last body byte, unless `timeout` says. */
export const DEFAULT_TIMEOUT = 30;
const READ = 64n * 1024n;
const dispose = Symbol.dispose || Symbol.for('dispose');
const utf8 = new TextEncoder();
const utf8d = new TextDecoder();

/** Why a request failed. `kind` is `denied`, `timeout`, `transport`, `status` (from
 * `errorForStatus`, with `status`), `json` or `invalid-request`; `message` never holds
 * a header value or body. Thrown out of a provider method it answers `denied`,
 * `unavailable` (timeout, transport, json, 408/429/5xx), `invalid-config` (a bad URL
 * or header) or `rejected` (other statuses). */
export class HttpError extends ProviderError {
  constructor(kind, message, status = undefined) {
    let tag = 'unavailable';
    if (kind === 'denied') tag = 'denied';
    else if (kind === 'invalid-request') tag = 'invalid-config';
    else if (kind === 'status' && !isTransientStatus(status)) tag = 'rejected';
    super(tag, kind === 'denied' ? `http request denied by the host: ${message}` : message);
    this.kind = kind;
    this.message = message;
    this.status = status;
  }
}

const release = (...resources) => {
  for (const r of resources) if (r) r[dispose]();
};
const payload = (e) => (e && typeof e === 'object' && 'payload' in e ? e.payload : e);

/** `[scheme, authority, pathWithQuery]` of an http:// or https:// URL. */
export function splitUrl(url) {
  const m = /^(https?):\/\/([^/?#]*)([^#]*)/i.exec(String(url));
  if (!m) throw new HttpError('invalid-request', 'url must start with http:// or https://');
  const [, scheme, authority, rest] = m;
  if (!authority || authority.includes('@')) {
    throw new HttpError('invalid-request', 'url has no host (or has user info)');
  }
  const path = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
  return [scheme.toLowerCase(), authority, path];
}

/** Percent-encodes everything but RFC 3986's unreserved characters. */
export const urlencode = (text) =>
  encodeURIComponent(String(text)).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** A complete response: `status`, `headers` (`[name, Uint8Array]`, names lowercase)
 * and the whole `body` (Uint8Array). */
export class Response {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }

  /** Whether the status is 2xx. */
  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  /** The first value of header `name` (case-insensitive), as text. */
  header(name) {
    const n = name.toLowerCase();
    const h = this.headers.find(([k]) => k.toLowerCase() === n);
    return h === undefined ? undefined : utf8d.decode(h[1]);
  }

  /** The body as text. */
  text() {
    return utf8d.decode(this.body);
  }

  /** The body parsed as JSON; throws `HttpError('json')` (unavailable). */
  json() {
    try {
      return JSON.parse(this.text());
    } catch {
      throw new HttpError('json', 'response is not JSON');
    }
  }

  /** Itself if 2xx, else throws `HttpError('status')`: 408, 429 and 5xx are
   * `unavailable`, other statuses `rejected`. */
  errorForStatus(what = 'service') {
    if (!this.ok) throw new HttpError('status', `${what} answered ${this.status}`, this.status);
    return this;
  }
}

/** An HTTP request being built; `send()` sends it and reads the response. */
export class Request {
  constructor(method, url) {
    this.method = String(method).toUpperCase();
    this.url = String(url);
    this.headers = [];
    this.body = new Uint8Array(0);
    this.timeoutSeconds = DEFAULT_TIMEOUT;
  }

  toString() {
    return `Request(${this.method} ${this.url.split('?')[0]})`; // never the headers
  }

  /** Adds a header (repeatable). */
  header(name, value) {
    this.headers.push([String(name).toLowerCase(), typeof value === 'string' ? utf8.encode(value) : value]);
    return this;
  }

  /** Adds `authorization: Bearer <token>`. */
  bearer(token) {
    return this.header('authorization', `Bearer ${token}`);
  }

  /** Appends `?k=v&…` (percent-encoded) to the URL. */
  query(params) {
    const pairs = Object.entries(params).map(([k, v]) => `${urlencode(k)}=${urlencode(v)}`);
    if (pairs.length) this.url += (this.url.includes('?') ? '&' : '?') + pairs.join('&');
    return this;
  }

  /** Bounds the whole exchange (connect, head, body); past it the request throws
   * `HttpError('timeout')` (unavailable). The host's per-call deadline still applies. */
  timeout(seconds) {
    this.timeoutSeconds = Number(seconds);
    return this;
  }

  /** Sets a raw body (string or Uint8Array, any size). */
  data(body, contentType = undefined) {
    this.body = typeof body === 'string' ? utf8.encode(body) : body;
    if (contentType !== undefined) this.header('content-type', contentType);
    return this;
  }

  /** Sets a JSON body and `content-type: application/json`. */
  json(value) {
    return this.data(JSON.stringify(value), 'application/json');
  }

  /** Sets an `application/x-www-form-urlencoded` body from an object or pairs. */
  form(pairs) {
    const items = Array.isArray(pairs) ? pairs : Object.entries(pairs);
    const enc = (s) => urlencode(s).replace(/%20/g, '+');
    return this.data(items.map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&'), 'application/x-www-form-urlencoded');
  }

  /** Sends the request and reads the whole response. Throws HttpError. */
  send() {
    const [scheme, authority, path] = splitUrl(this.url);
    const budget = BigInt(Math.max(0, Math.round(this.timeoutSeconds * 1e9)));
    const deadline = now() + budget;
    const entries = this.headers.filter(([k]) => k !== 'content-length');
    if (this.body.length > 0 || ['POST', 'PUT', 'PATCH'].includes(this.method)) {
      entries.push(['content-length', utf8.encode(String(this.body.length))]);
    }
    let fields;
    try {
      fields = Fields.fromList(entries);
    } catch (e) {
      throw new HttpError('invalid-request', `header refused (${payload(e)?.tag ?? 'invalid'})`);
    }
    const req = new OutgoingRequest(fields); // takes ownership of `fields`
    const known = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'];
    try {
      req.setMethod(known.includes(this.method) ? { tag: this.method.toLowerCase() } : { tag: 'other', val: this.method });
      req.setScheme({ tag: scheme.toUpperCase() });
      req.setAuthority(authority);
      req.setPathWithQuery(path);
    } catch {
      release(req);
      throw new HttpError('invalid-request', `invalid request to ${authority}`);
    }
    const outBody = req.body();
    const options = new RequestOptions();
    try {
      options.setConnectTimeout(budget);
      options.setFirstByteTimeout(budget);
    } catch {
      // A host without them: the SDK's own deadline still holds.
    }
    let future;
    try {
      future = handle(req, options);
    } catch (e) {
      release(outBody);
      throw transport(payload(e), authority);
    }
    try {
      try {
        writeBody(outBody, this.body, deadline, authority);
      } catch (e) {
        release(outBody); // dropped unfinished: the request aborts
        throw e;
      }
      try {
        OutgoingBody.finish(outBody, undefined);
      } catch (e) {
        throw transport(payload(e), authority);
      }
      const response = awaitResponse(future, deadline, authority);
      try {
        const status = response.status();
        const h = response.headers();
        const headers = h.entries();
        release(h);
        return new Response(status, headers, readBody(response, deadline, authority));
      } finally {
        release(response);
      }
    } finally {
      release(future);
    }
  }
}

function transport(code, authority) {
  const name = String(code?.tag ?? 'internal-error').toLowerCase();
  if (name === 'http-request-denied' || name === 'destination-ip-prohibited') {
    return new HttpError('denied', `${authority} (${name})`);
  }
  if (['connection-timeout', 'connection-read-timeout', 'http-response-timeout', 'dns-timeout'].includes(name)) {
    return new HttpError('timeout', `request to ${authority} timed out (${name})`);
  }
  return new HttpError('transport', `request to ${authority} failed (${name})`);
}

/** Blocks until `pollable` is ready, or throws a timeout at `deadline`. */
function wait(pollable, deadline, authority) {
  try {
    const remaining = deadline - now();
    if (remaining <= 0n) throw new HttpError('timeout', `request to ${authority} timed out`);
    const timer = subscribeDuration(remaining);
    let ready;
    try {
      ready = poll([pollable, timer]);
    } finally {
      release(timer);
    }
    if (!Array.from(ready).includes(0)) throw new HttpError('timeout', `request to ${authority} timed out`);
  } finally {
    release(pollable);
  }
}

function writeBody(outBody, data, deadline, authority) {
  if (data.length === 0) return;
  const stream = outBody.write();
  const closed = () => new HttpError('transport', `request to ${authority}: body stream closed`);
  try {
    let off = 0;
    while (off < data.length) {
      let room;
      try {
        room = Number(stream.checkWrite());
      } catch {
        throw closed();
      }
      if (room === 0) {
        wait(stream.subscribe(), deadline, authority);
        continue;
      }
      const n = Math.min(room, CHUNK, data.length - off);
      try {
        stream.write(data.subarray(off, off + n));
      } catch {
        throw closed();
      }
      off += n;
    }
    // Everything is written. The service may answer (and close) before reading it
    // all: a failure to flush is then the response's to report, not the body's.
    try {
      stream.flush();
      while (stream.checkWrite() === 0n) wait(stream.subscribe(), deadline, authority);
    } catch (e) {
      if (e instanceof HttpError && e.kind === 'timeout') throw e;
    }
  } finally {
    release(stream);
  }
}

function awaitResponse(future, deadline, authority) {
  for (;;) {
    const got = future.get();
    if (got !== undefined) {
      // option<result<result<incoming-response, error-code>>>: outer err = taken twice.
      if (got.tag === 'err') throw new HttpError('transport', `request to ${authority}: response taken twice`);
      if (got.val.tag === 'err') throw transport(got.val.val, authority);
      return got.val.val;
    }
    wait(future.subscribe(), deadline, authority);
  }
}

function readBody(response, deadline, authority) {
  const incoming = response.consume();
  const chunks = [];
  let total = 0;
  try {
    const stream = incoming.stream();
    try {
      for (;;) {
        let chunk;
        try {
          chunk = stream.read(READ);
        } catch (e) {
          if (payload(e)?.tag === 'closed') break;
          throw new HttpError('transport', `reading the response of ${authority} failed`);
        }
        if (chunk.length > 0) {
          chunks.push(chunk);
          total += chunk.length;
        } else {
          wait(stream.subscribe(), deadline, authority);
        }
      }
    } finally {
      release(stream);
    }
  } catch (e) {
    release(incoming); // the stream is gone: the body may go now
    throw e;
  }
  release(IncomingBody.finish(incoming));
  const body = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    body.set(c, off);
    off += c.length;
  }
  return body;
}

/** A request with any method. */
export const request = (method, url) => new Request(method, url);
/** `GET url`. */
export const get = (url) => new Request('GET', url);
/** `POST url`. */
export const post = (url) => new Request('POST', url);
/** `PUT url`. */
export const put = (url) => new Request('PUT', url);
/** `PATCH url`. */
export const patch = (url) => new Request('PATCH', url);
/** `DELETE url`. */
export const del = (url) => new Request('DELETE', url);
