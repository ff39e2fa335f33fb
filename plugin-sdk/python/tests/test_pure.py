"""The SDK's pure modules under plain CPython: published SHA-2/HMAC vectors (FIPS
180-4 examples, RFC 4231), RFC 3339 parsing (the Rust SDK's cases) and redaction.

Run with ``python3 -m unittest discover -s plugin-sdk/python/tests``. The modules are
loaded by file, not through the package, whose ``__init__`` needs the component's
generated bindings.
"""

import importlib.util
import pathlib
import unittest

_SDK = pathlib.Path(__file__).resolve().parent.parent / "latchkey_sdk"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"latchkey_sdk_{name}", _SDK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sign = _load("sign")
timefmt = _load("timefmt")
redact = _load("redact").redact


class Sign(unittest.TestCase):
    def test_digests_match_fips_180_4(self):
        self.assertEqual(sign.sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        self.assertEqual(
            sign.hex(sign.sha512("abc"))[:32], "ddaf35a193617abacc417349ae204131"
        )

    def test_hmac_matches_rfc_4231(self):
        self.assertEqual(
            sign.hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        )
        self.assertEqual(
            sign.hmac_sha512_hex("Jefe", "what do ya want for nothing?")[:32],
            "164b7a7bfcf819e2e395fbe73b56e0a3",
        )

    def test_base64_round_trips(self):
        self.assertEqual(sign.base64("foobar"), "Zm9vYmFy")
        self.assertEqual(sign.base64url(b"\xfb\xff"), "-_8")
        self.assertEqual(sign.base64_decode("-_8"), b"\xfb\xff")
        self.assertEqual(sign.base64_decode("Zm8"), b"fo")
        self.assertIsNone(sign.base64_decode("not base64!"))
        self.assertTrue(sign.equal("abc", "abc"))
        self.assertFalse(sign.equal("abc", "abd"))


class Rfc3339(unittest.TestCase):
    def test_parses_what_services_send(self):
        p = timefmt.parse_rfc3339
        self.assertEqual(p("1970-01-01T00:00:00Z"), 0)
        self.assertEqual(p("2023-12-22T07:20:25Z"), 1_703_229_625)
        self.assertEqual(p("2023-12-22T07:20:25.123Z"), 1_703_229_625)
        self.assertEqual(p("2023-12-22T09:20:25+02:00"), 1_703_229_625)
        self.assertEqual(p("2024-02-29T00:00:00Z"), 1_709_164_800)
        self.assertEqual(timefmt.rfc3339(1_703_229_625), "2023-12-22T07:20:25Z")

    def test_refuses_other_text(self):
        for bad in ["", "0", "2023-02-29T00:00:00Z", "2023-13-01T00:00:00Z", "2023-12-22",
                    "2023-12-22T07:20:25", "2023-12-22T07:20:25.Z", "2023-12-22T07:20:25+2:00",
                    "1960-01-01T00:00:00Z"]:
            self.assertIsNone(timefmt.parse_rfc3339(bad), bad)


class Redact(unittest.TestCase):
    def test_removes_secrets_and_masked_keys(self):
        self.assertEqual(
            redact("Incorrect API key provided: sk-abc*****wxyz. See the docs.", ["sk-abcdefwxyz"]),
            "Incorrect API key provided: [redacted] See the docs.",
        )
        self.assertEqual(redact("key sk-abcdefwxyz refused", ["sk-abcdefwxyz"]), "key [redacted] refused")
        self.assertEqual(redact("key sk-or-v1-au7...890 refused"), "key [redacted] refused")
        self.assertEqual(redact("line\x07break"), "line break")
        self.assertEqual(len(redact("é" * 400)), 301)


if __name__ == "__main__":
    unittest.main()
