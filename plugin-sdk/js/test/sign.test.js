// Published test vectors for the signing helpers (FIPS 180-4 examples, RFC 4231).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as sign from '../src/sign.js';

test('sha256 and sha512 match FIPS 180-4 examples', () => {
  assert.equal(sign.sha256Hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(sign.sha256Hex(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(
    sign.sha256Hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
  assert.equal(
    sign.hex(sign.sha512('abc')),
    'ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f',
  );
  assert.equal(sign.sha256Hex('a'.repeat(1000)).length, 64);
});

test('hmac matches RFC 4231 test case 2 and the common example', () => {
  assert.equal(
    sign.hmacSha256Hex('Jefe', 'what do ya want for nothing?'),
    '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
  );
  assert.equal(
    sign.hmacSha512Hex('Jefe', 'what do ya want for nothing?'),
    '164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737',
  );
  assert.equal(
    sign.hmacSha256Hex('key', 'The quick brown fox jumps over the lazy dog'),
    'f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8',
  );
  // RFC 4231 test case 6: a key longer than the block is hashed first.
  assert.equal(
    sign.hmacSha256Hex(new Uint8Array(131).fill(0xaa), 'Test Using Larger Than Block-Size Key - Hash Key First'),
    '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
  );
});

test('base64 round trips and matches RFC 4648 examples', () => {
  for (const [plain, enc] of [['', ''], ['f', 'Zg=='], ['fo', 'Zm8='], ['foo', 'Zm9v'], ['foobar', 'Zm9vYmFy']]) {
    assert.equal(sign.base64(plain), enc);
    assert.equal(new TextDecoder().decode(sign.base64Decode(enc)), plain);
  }
  assert.equal(sign.base64url(new Uint8Array([0xfb, 0xff])), '-_8');
  assert.deepEqual([...sign.base64Decode('-_8')], [0xfb, 0xff]);
  assert.equal(sign.base64Decode('not base64!'), undefined);
  assert.ok(sign.equal('abc', 'abc'));
  assert.ok(!sign.equal('abc', 'abd'));
  assert.ok(!sign.equal('abc', 'abcd'));
});
