// RFC 3339 timestamps as services send them, to and from BigInt seconds since the
// Unix epoch. Pure (no host imports), so it also runs under plain Node for tests.

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$/;

/** Seconds since the epoch (BigInt) of an RFC 3339 date-time (`2023-12-22T07:20:25Z`,
 * fractions and `±hh:mm` offsets allowed), or `undefined` if it is not one. */
export function parseRfc3339(text) {
  const m = RFC3339.exec(String(text).trim());
  if (!m) return undefined;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
  const zone = m[8];
  if (mo < 1 || mo > 12 || h > 23 || mi > 59 || s > 60) return undefined;
  const days = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  if (d < 1 || d > days) return undefined;
  let offset = 0;
  if (zone !== 'Z' && zone !== 'z') {
    offset = (zone[0] === '+' ? 1 : -1) * (Number(zone.slice(1, 3)) * 3600 + Number(zone.slice(4, 6)) * 60);
  }
  const secs = Date.UTC(y, mo - 1, d, h, mi, Math.min(s, 59)) / 1000 - offset;
  return secs >= 0 ? BigInt(secs) : undefined;
}

/** Seconds since the epoch (BigInt or Number) as an RFC 3339 UTC timestamp. */
export const rfc3339 = (secs) => new Date(Number(secs) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
