/**
 * Query parameters of store URLs: an unknown one is an error naming it and the accepted ones (a typo would
 * otherwise be ignored, or passed on to the driver), and a bad value is quoted as written.
 * @module
 */
import { OptionError } from '../errors';

/** Throws unless every parameter of `query` is one of `accepted`. */
export function checkParams(url: string, query: URLSearchParams, accepted: readonly string[]): void {
  for (const name of new Set(query.keys())) {
    if (!accepted.includes(name)) {
      const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(url)?.[0] ?? '';
      throw new OptionError(
        'store',
        url,
        `unknown query parameter "${name}": ${scheme}// URLs accept ${accepted.length ? accepted.map((a) => `"${a}"`).join(', ') : 'none'}`,
      );
    }
  }
}

/** A positive number parameter, or undefined when absent. `whole` also requires an integer. */
export function numberParam(query: URLSearchParams, name: string, what: string, whole = false): number | undefined {
  const raw = query.get(name);
  if (raw === null) return undefined;
  const n = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw.trim()) || !(n > 0) || (whole && !Number.isSafeInteger(n))) throw new OptionError(name, raw, `expected a positive ${whole ? 'whole ' : ''}number of ${what}`);
  return n;
}

/** A boolean parameter written `1`, `true`, `0` or `false`, or undefined when absent. */
export function booleanParam(query: URLSearchParams, name: string): boolean | undefined {
  const raw = query.get(name);
  if (raw === null) return undefined;
  if (raw === '1' || raw === 'true') return true;
  if (raw === '0' || raw === 'false') return false;
  throw new OptionError(name, raw, 'expected 1, true, 0 or false');
}
