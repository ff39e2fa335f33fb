#!/usr/bin/env node
// Fetch a secret from the local latchkey agent over mTLS on its Unix socket.
// Node's standard library only. Usage: node latchkey_client.mjs PATH [FIELD]
// Environment: LATCHKEY_SOCKET, LATCHKEY_CERT, LATCHKEY_KEY, LATCHKEY_CACERT
// (defaults: the files `latchkey init --dir .latchkey` makes, admin certificate).
import https from 'node:https';
import { readFileSync } from 'node:fs';

const dir = '.latchkey';
const env = (name, fallback) => process.env[name] ?? fallback;

export function getSecret(path) {
  const options = {
    socketPath: env('LATCHKEY_SOCKET', `${dir}/run/latchkey.sock`),
    path: `/v1/secrets/${path}`,
    servername: 'localhost',
    ca: readFileSync(env('LATCHKEY_CACERT', `${dir}/ca/ca.pem`)),
    cert: readFileSync(env('LATCHKEY_CERT', `${dir}/clients/admin.pem`)),
    key: readFileSync(env('LATCHKEY_KEY', `${dir}/clients/admin.key`)),
    minVersion: 'TLSv1.3',
  };
  return new Promise((resolve, reject) => {
    https
      .get(options, (res) => {
        let body = '';
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => {
          const json = JSON.parse(body);
          if (res.statusCode !== 200) {
            reject(new Error(`${res.statusCode} ${json.error.code}: ${json.error.message}`));
          } else {
            resolve(json);
          }
        });
      })
      .on('error', reject);
  });
}

const [, , path, field] = process.argv;
if (!path) {
  console.error('usage: node latchkey_client.mjs PATH [FIELD]');
  process.exit(2);
}
try {
  const secret = await getSecret(path);
  console.log(field ? secret.fields[field] : JSON.stringify(secret.fields, null, 2));
} catch (err) {
  console.error(err.message);
  process.exit(1);
}
