// The OAuth 2 server for the end-to-end tests: the real `oauth2-mock-server` npm
// package, driven through its library API, plus a small control API for the tests.
//
//   node oauth-server.mjs <path of the oauth2-mock-server package folder>
//
// Listens on 127.0.0.1 on a port the OS picks and prints one line to stdout,
// `{"port": N}`, once it accepts connections. The issuer is http://127.0.0.1:N.
//
// Token endpoint behaviour (POST /token), applied in the library's `beforeResponse`
// hook to the answer it built:
//   - every answered token request is recorded (see GET /__control/requests);
//   - a refresh_token grant whose refresh token starts with `revoked-` gets
//     400 {"error":"invalid_grant","error_description":"..."} (RFC 6749 §5.2);
//   - a client whose secret starts with `wrong-` gets
//     401 {"error":"invalid_client",...} with WWW-Authenticate: Basic;
//   - `expires_in` is the configured one (also the JWT's `exp`);
//   - a new refresh token is returned only when configured (`issue_refresh_token`).
//
// Userinfo (GET /userinfo) and introspection (POST /introspect, RFC 7662) know the
// access tokens this server issued: userinfo answers 401 with
// `WWW-Authenticate: Bearer error="invalid_token"` for any other bearer token, and
// introspection answers {"active": false} for it (else active, scope, exp, client_id).
//
// Control API (same port, paths the plugins never use):
//   GET  /__control/requests  -> [{grant_type, auth, client_id, client_secret,
//                                  refresh_token, scope, audience, status}, ...]
//   POST /__control/config    <- JSON, any of {expires_in, issue_refresh_token,
//                                  delay_ms, unavailable}; answers the whole config
//   POST /__control/reset     clears the recorded requests
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const pkg = process.argv[2];
if (!pkg) {
  console.error('usage: oauth-server.mjs <oauth2-mock-server package folder>');
  process.exit(2);
}
const { OAuth2Issuer, OAuth2Service, Events } = await import(
  pathToFileURL(join(pkg, 'dist', 'index.mjs')).href
);

const config = {
  expires_in: 3600,
  issue_refresh_token: true,
  delay_ms: 0,
  unavailable: false,
};
const requests = [];
// Access tokens issued, with what introspection reports about them.
const issued = new Map();

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

// client_secret_basic as RFC 6749 §2.3.1 sends it: base64 of `id:secret`, each
// form-urlencoded. Kept exactly as sent (not decoded), so tests see the encoding.
function basicAuth(header) {
  const m = /^Basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return null;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const i = text.indexOf(':');
  return i < 0 ? null : { id: text.slice(0, i), secret: text.slice(i + 1) };
}

service.on(Events.BeforeTokenSigning, (token) => {
  token.payload.exp = Math.floor(Date.now() / 1000) + config.expires_in;
});

service.on(Events.BeforeResponse, (response, req) => {
  const body = req.body ?? {};
  const basic = basicAuth(req.headers.authorization);
  const record = {
    grant_type: body.grant_type ?? null,
    auth: basic ? 'basic' : body.client_secret !== undefined ? 'body' : 'none',
    client_id: basic ? basic.id : (body.client_id ?? null),
    client_secret: basic ? basic.secret : (body.client_secret ?? null),
    refresh_token: body.refresh_token ?? null,
    scope: body.scope ?? null,
    audience: body.audience ?? null,
    status: 200,
  };
  if (config.unavailable) {
    response.statusCode = 503;
    response.body = {
      error: 'temporarily_unavailable',
      error_description: 'the authorization server is overloaded',
    };
  } else if (record.client_secret?.startsWith('wrong-')) {
    response.statusCode = 401;
    response.body = {
      error: 'invalid_client',
      error_description: 'client authentication failed',
    };
  } else if (
    body.grant_type === 'refresh_token' &&
    String(body.refresh_token ?? '').startsWith('revoked-')
  ) {
    response.statusCode = 400;
    response.body = {
      error: 'invalid_grant',
      error_description: 'the refresh token is invalid, expired or revoked',
    };
  } else {
    response.body.expires_in = config.expires_in;
    if (!config.issue_refresh_token) delete response.body.refresh_token;
    issued.set(response.body.access_token, {
      scope: response.body.scope,
      client_id: record.client_id,
      exp: Math.floor(Date.now() / 1000) + config.expires_in,
    });
  }
  record.status = response.statusCode;
  requests.push(record);
});

function bearer(req) {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m ? m[1] : null;
}

service.on(Events.BeforeUserinfo, (response, req) => {
  if (!issued.has(bearer(req))) {
    response.statusCode = 401;
    response.body = { error: 'invalid_token', error_description: 'unknown access token' };
  }
});

service.on(Events.BeforeIntrospect, (response, req) => {
  const body = req.latchkeyBody ?? {};
  const known = issued.get(body.token);
  response.body = known ? { active: true, token_type: 'Bearer', ...known } : { active: false };
});

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

async function control(req, res, path) {
  if (req.method === 'GET' && path === '/__control/requests') {
    return sendJson(res, 200, requests);
  }
  if (req.method === 'POST' && path === '/__control/reset') {
    requests.length = 0;
    return sendJson(res, 200, {});
  }
  if (req.method === 'POST' && path === '/__control/config') {
    const update = await readJson(req);
    for (const key of Object.keys(update)) {
      if (!(key in config) || typeof update[key] !== typeof config[key]) {
        return sendJson(res, 400, { error: `bad config key ${key}` });
      }
    }
    Object.assign(config, update);
    return sendJson(res, 200, config);
  }
  return sendJson(res, 404, { error: 'no such control route' });
}

const handler = service.requestHandler;
const server = createServer((req, res) => {
  const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
  if (path.startsWith('/__control/')) {
    control(req, res, path).catch((e) => sendJson(res, 400, { error: String(e) }));
  } else if (path === '/userinfo' && !issued.has(bearer(req))) {
    res.setHeader('WWW-Authenticate', 'Bearer error="invalid_token"');
    handler(req, res);
  } else if (path === '/introspect' && req.method === 'POST') {
    // The library does not parse this body; read it for the BeforeIntrospect hook.
    readForm(req)
      .then((body) => {
        req.latchkeyBody = body;
        handler(req, res);
      })
      .catch((e) => sendJson(res, 400, { error: String(e) }));
  } else if (path === '/token' && config.delay_ms > 0) {
    setTimeout(() => handler(req, res), config.delay_ms);
  } else {
    handler(req, res);
  }
});
server.keepAliveTimeout = 1000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer.url = `http://127.0.0.1:${port}`;
  process.stdout.write(JSON.stringify({ port }) + '\n');
});

// Stop with the test: on a signal, and when stdin closes (the harness holds it open).
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
