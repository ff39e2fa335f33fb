"""RFC 3339 timestamps as services send them, to and from seconds since the Unix epoch.

Pure (standard library only), so it also runs under plain CPython for tests.
"""

import re
from datetime import datetime, timezone
from typing import Optional

__all__ = ["parse_rfc3339", "rfc3339"]

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> Optional[int]:
    """Seconds since the epoch of an RFC 3339 date-time (``2023-12-22T07:20:25Z``,
    fractions and ``±hh:mm`` offsets allowed), or ``None`` if it is not one."""
    m = _RFC3339.match(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, _frac, zone = m.groups()
    try:
        if zone in ("Z", "z"):
            offset = 0
        else:
            sign = 1 if zone[0] == "+" else -1
            offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
        second = min(int(s), 59)  # a leap second reads as :59
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), second, tzinfo=timezone.utc)
    except ValueError:
        return None
    secs = int(t.timestamp()) - offset
    return secs if secs >= 0 else None


def rfc3339(secs: int) -> str:
    """``secs`` since the epoch as an RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
