/**
 * TTL parsing: seconds, duration strings and `none`.
 * @module
 */

const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
const DURATION = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/;

/**
 * A time-to-live as the tag and the API accept it: seconds (integer or fractional, >= 0), a duration string
 * (`"90s"`, `"15m"`, `"1h"`, `"2d"`, `"500ms"`; a bare number string is seconds), or `null` for no expiry.
 */
export type Ttl = number | string | null;

/**
 * Parses a TTL into milliseconds: `null` means no expiry, `0` means "do not store".
 * Returns an error message (a string starting with "ttl") instead of throwing, so each caller can raise
 * the error class that fits where it is (template or API).
 */
export function parseTtl(ttl: unknown): { ms: number | null } | { error: string } {
  if (ttl === null) return { ms: null };
  if (typeof ttl === 'number') {
    if (!Number.isFinite(ttl) || ttl < 0) return { error: 'ttl must be a finite number of seconds >= 0' };
    return { ms: Math.round(ttl * 1000) };
  }
  if (typeof ttl === 'string') {
    const m = DURATION.exec(ttl);
    if (!m) return { error: 'ttl must be seconds or a duration like "90s", "15m", "1h", "2d"' };
    return { ms: Math.round(Number(m[1]) * UNIT_SECONDS[m[2] ?? 's'] * 1000) };
  }
  return { error: 'ttl must be seconds, a duration string or none' };
}
