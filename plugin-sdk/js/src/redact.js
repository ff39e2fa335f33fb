// Removing secrets from service text before it becomes a detail or an error message.
// Pure (no host imports), so it also runs under plain Node for tests.

const MAX_TEXT = 300;

const looksMasked = (word) => word.includes('**') || /[A-Za-z0-9]\.\.\.[A-Za-z0-9]/.test(word);

/** `text` with secrets removed: every whitespace-separated word that contains one of
 * `secrets` or looks like a masked key (`sk-abc***xyz`, `sk-au7...890`) becomes
 * `[redacted]`; control characters become spaces; at most 300 characters are kept. */
export function redact(text, secrets = []) {
  const words = String(text)
    .split(/\s+/)
    .filter((w) => w !== '')
    .map((w) =>
      secrets.some((s) => s && w.includes(s)) || looksMasked(w)
        ? '[redacted]'
        : w.replace(/[\u0000-\u001f\u007f]/g, ' '),
    );
  const joined = words.join(' ');
  const chars = Array.from(joined);
  return chars.length <= MAX_TEXT ? joined : `${chars.slice(0, MAX_TEXT).join('')}…`;
}
