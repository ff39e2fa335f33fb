"""HMAC-SHA256/512, SHA-2 digests and hex/base64 encodings, for request signing.

Pure standard library (``hmac``, ``hashlib``, ``base64``), so it also runs outside a
component, e.g. in a provider's unit tests.

    from latchkey_sdk import sign
    sign.hmac_sha256_hex(b"key", b"The quick brown fox jumps over the lazy dog")
    # 'f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8'
"""

import base64 as _b64
import binascii
import hashlib
import hmac
from typing import Optional, Union

__all__ = [
    "hmac_sha256",
    "hmac_sha256_hex",
    "hmac_sha512",
    "hmac_sha512_hex",
    "sha256",
    "sha256_hex",
    "sha512",
    "hex",
    "base64",
    "base64url",
    "base64_decode",
    "equal",
]

Bytes = Union[bytes, bytearray, str]


def _b(data: Bytes) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def hmac_sha256(key: Bytes, message: Bytes) -> bytes:
    """HMAC-SHA256 of ``message`` under ``key`` (str is taken as UTF-8)."""
    return hmac.new(_b(key), _b(message), hashlib.sha256).digest()


def hmac_sha256_hex(key: Bytes, message: Bytes) -> str:
    """HMAC-SHA256 as lowercase hex."""
    return hmac_sha256(key, message).hex()


def hmac_sha512(key: Bytes, message: Bytes) -> bytes:
    """HMAC-SHA512 of ``message`` under ``key``."""
    return hmac.new(_b(key), _b(message), hashlib.sha512).digest()


def hmac_sha512_hex(key: Bytes, message: Bytes) -> str:
    """HMAC-SHA512 as lowercase hex."""
    return hmac_sha512(key, message).hex()


def sha256(data: Bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(_b(data)).digest()


def sha256_hex(data: Bytes) -> str:
    """SHA-256 digest as lowercase hex (e.g. AWS-style payload hashes)."""
    return hashlib.sha256(_b(data)).hexdigest()


def sha512(data: Bytes) -> bytes:
    """SHA-512 digest."""
    return hashlib.sha512(_b(data)).digest()


def hex(data: Bytes) -> str:  # noqa: A001 - the name the Rust SDK uses
    """Lowercase hex."""
    return _b(data).hex()


def base64(data: Bytes) -> str:
    """Standard base64 with padding."""
    return _b64.b64encode(_b(data)).decode()


def base64url(data: Bytes) -> str:
    """URL-safe base64 without padding (JWT style)."""
    return _b64.urlsafe_b64encode(_b(data)).rstrip(b"=").decode()


def base64_decode(text: str) -> Optional[bytes]:
    """Decodes standard or URL-safe base64, padded or not; ``None`` if malformed."""
    t = text.strip().replace("-", "+").replace("_", "/")
    t += "=" * (-len(t) % 4)
    try:
        return _b64.b64decode(t, validate=True)
    except (binascii.Error, ValueError):
        return None


def equal(a: Bytes, b: Bytes) -> bool:
    """Constant-time comparison (for checking signatures)."""
    return hmac.compare_digest(_b(a), _b(b))
