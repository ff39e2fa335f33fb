// The pure text helpers: RFC 3339 parsing (the Rust SDK's cases) and redaction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRfc3339, rfc3339 } from '../src/time.js';
import { redact } from '../src/redact.js';

test('parses RFC 3339 as services send it', () => {
  assert.equal(parseRfc3339('1970-01-01T00:00:00Z'), 0n);
  assert.equal(parseRfc3339('2023-12-22T07:20:25Z'), 1_703_229_625n);
  assert.equal(parseRfc3339('2023-12-22T07:20:25.123Z'), 1_703_229_625n);
  assert.equal(parseRfc3339('2023-12-22T09:20:25+02:00'), 1_703_229_625n);
  assert.equal(parseRfc3339('2024-02-29T00:00:00Z'), 1_709_164_800n);
  assert.equal(rfc3339(1_703_229_625n), '2023-12-22T07:20:25Z');
});

test('refuses what is not an RFC 3339 time', () => {
  for (const bad of ['', '0', '2023-02-29T00:00:00Z', '2023-13-01T00:00:00Z', '2023-12-22',
    '2023-12-22T07:20:25', '2023-12-22T07:20:25.Z', '2023-12-22T07:20:25+2:00', '1960-01-01T00:00:00Z']) {
    assert.equal(parseRfc3339(bad), undefined, bad);
  }
});

test('redacts secrets and masked keys from service text', () => {
  assert.equal(
    redact('Incorrect API key provided: sk-abc*****wxyz. See the docs.', ['sk-abcdefwxyz']),
    'Incorrect API key provided: [redacted] See the docs.',
  );
  assert.equal(redact('key sk-abcdefwxyz refused', ['sk-abcdefwxyz']), 'key [redacted] refused');
  assert.equal(redact('key sk-or-v1-au7...890 refused'), 'key [redacted] refused');
  assert.equal(redact('line\u0007break'), 'line break');
  assert.equal(Array.from(redact('é'.repeat(400))).length, 301);
});
