"""Time and randomness for providers: the host's wall clock (wasi:clocks), its
random source (wasi:random), and a parser for RFC 3339 timestamps services send.

    from latchkey_sdk import clock
    expires_at = clock.now_secs() + int(body["expires_in"])
    nonce = clock.random_hex(16)

During a retried ``create-pending`` the host replays the same random bytes, so a
secret drawn here is the same on the second attempt (see ``wit/provider.wit``).
"""

from wit_world.imports import random as _random
from wit_world.imports import wall_clock

from .timefmt import parse_rfc3339, rfc3339

__all__ = [
    "now_secs",
    "now_ms",
    "random_bytes",
    "random_hex",
    "random_token",
    "parse_rfc3339",
    "rfc3339",
]


def now_secs() -> int:
    """Seconds since the Unix epoch, from the host's wall clock."""
    return int(wall_clock.now().seconds)


def now_ms() -> int:
    """Milliseconds since the Unix epoch (what exchanges sign as a timestamp)."""
    t = wall_clock.now()
    return int(t.seconds) * 1000 + int(t.nanoseconds) // 1_000_000


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the host's cryptographically secure random source."""
    return bytes(_random.get_random_bytes(n))


def random_hex(n: int) -> str:
    """``n`` random bytes as lowercase hex (``2n`` characters)."""
    return random_bytes(n).hex()


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def random_token(length: int, alphabet: str = _ALPHABET) -> str:
    """A random string of ``length`` characters from ``alphabet`` (unbiased: bytes
    that would skew the distribution are drawn again)."""
    if not 1 < len(alphabet) <= 256:
        raise ValueError("alphabet must have 2 to 256 characters")
    limit = 256 - 256 % len(alphabet)
    out = []
    while len(out) < length:
        for b in random_bytes(length * 2):
            if b < limit and len(out) < length:
                out.append(alphabet[b % len(alphabet)])
    return "".join(out)
