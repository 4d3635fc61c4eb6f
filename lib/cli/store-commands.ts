/**
 * The store commands: `keys`, `inspect`, `invalidate`, `stats`, `clear`, against the configured shared
 * store (never the in-process memory store: another process cannot see it).
 * @module
 */
import type { Command } from 'commander';
import type { FragmentCache } from '../cache';
import { tagKeysOf, type Entry } from '../entry';
import { OptionError } from '../errors';
import { encodeValue, namePart, varyPart } from '../keys';
import { describeStore, loadConfig, type CliConfig, type ConfigFlags } from './config';
import * as fmt from './format';
import { CliError, colorsFor, progress, tableWidth, type Colors } from './io';
import { describeTag, globToRegExp, keyInfo, type KeyInfo } from './keyinfo';
import { closeQuietly, openCache } from './open';

const BATCH = 500;

/** Opens the cache, runs `fn`, and always closes the store. */
async function withCache(options: ConfigFlags, fn: (cache: FragmentCache, config: CliConfig) => Promise<void>): Promise<void> {
  const config = loadConfig(options);
  const cache = await openCache(config);
  try {
    await fn(cache, config);
  } finally {
    await closeQuietly(cache.store);
  }
}

/** Every key under `prefix`, with a progress line on a TTY. */
async function scan(cache: FragmentCache, prefix: string, filter: (k: string) => boolean = () => true): Promise<string[]> {
  const store = cache.store;
  if (!store.keys) {
    const why = store.kind === 'memcache' ? ' (Memcached has no command that lists keys)' : '';
    throw new CliError(`the ${store.kind} store cannot list its keys${why}, so keys, inspect and stats cannot work on it; invalidate and clear do`);
  }
  const bar = progress();
  const out: string[] = [];
  let seen = 0;
  try {
    for await (const k of store.keys(prefix)) {
      seen++;
      if (filter(k)) out.push(k);
      bar.update(`scanning ${describeStore(store.kind)}… ${seen} keys, ${out.length} matching`);
    }
  } finally {
    bar.done();
  }
  return out.sort();
}

/** Reads entries in batches (one round trip each), with progress on a TTY. */
async function read(cache: FragmentCache, keys: readonly string[]): Promise<(Entry | undefined)[]> {
  const bar = progress();
  const out: (Entry | undefined)[] = [];
  try {
    for (let i = 0; i < keys.length; i += BATCH) {
      const batch = keys.slice(i, i + BATCH);
      out.push(...(await cache.guard.run('getMany', () => cache.store.getMany(batch))));
      bar.update(`reading entries… ${Math.min(i + BATCH, keys.length)}/${keys.length}`);
    }
  } finally {
    bar.done();
  }
  return out;
}

const ttlLeft = (e: Entry | undefined, now: number): number | null | undefined => (!e ? undefined : e.expires === null ? null : Math.max(0, (e.expires - now) / 1000));

/** Vary values from the command line: strings, or JSON with `--json`. */
function parseVary(values: readonly string[], json: boolean | undefined): unknown[] {
  if (!json) return [...values];
  return values.map((v) => {
    try {
      return JSON.parse(v) as unknown;
    } catch {
      throw new OptionError('vary', v, 'expected JSON with --json (strings need quotes: \'"text"\')');
    }
  });
}

/** What a key is, in a few words: fragment name and vary values, the tag, the value's key, or the page's URL. */
function about(info: KeyInfo): string {
  switch (info.kind) {
    case 'fragment':
      if (info.varyPreview) return `${info.name} (${info.varyPreview})`;
      return info.vary?.length ? `${info.name} (${fmt.vary(info.vary)})` : (info.name ?? '');
    case 'page':
    case 'page-vary': {
      const url = info.url ?? '(hashed URL)';
      const prefix = info.pagePrefix ? ` [page prefix ${JSON.stringify(info.pagePrefix)}]` : '';
      const headers = Array.isArray(info.vary?.[0]) ? (info.vary[0] as unknown[]).filter((h): h is [string, unknown] => Array.isArray(h) && h.length === 2) : [];
      const vary = headers.length ? ` (${headers.map(([h, v]) => `${h}: ${v === null ? '-' : String(v)}`).join(', ')})` : '';
      return `${url}${prefix}${vary}`;
    }
    default:
      return info.name ?? '';
  }
}

/** `fragcache keys [pattern]`. */
export async function keys(pattern: string | undefined, options: ConfigFlags & { json?: boolean; wide?: boolean }): Promise<void> {
  await withCache(options, async (cache, config) => {
    const re = pattern ? globToRegExp(pattern) : undefined;
    const match = (k: string) => {
      if (!re) return true;
      const info = keyInfo(k, cache.prefix, cache.version);
      if (re.test(k) || (info.kind === 'fragment' && re.test(info.name!))) return true;
      // Pages: the URL, or just its path and query (`fragcache keys '/articles*'`).
      return info.kind === 'page' && info.url !== undefined && (re.test(info.url) || re.test(info.url.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, '')));
    };
    const found = await scan(cache, `${cache.prefix}:`, match);
    const entries = await read(cache, found);
    const now = Date.now();
    const infos: KeyInfo[] = [];
    const rows = found.map((key, i) => {
      const e = entries[i];
      const info = keyInfo(key, cache.prefix, cache.version, e);
      infos.push(info);
      return {
        key,
        kind: info.kind,
        name: info.name,
        ...(info.url !== undefined || info.kind === 'page' || info.kind === 'page-vary' ? { url: info.url ?? null } : {}),
        ...(info.pagePrefix ? { pagePrefix: info.pagePrefix } : {}),
        vary: info.vary,
        ...(info.varyPreview ? { varyPreview: info.varyPreview } : {}),
        size: e?.body.length,
        ttlLeft: ttlLeft(e, now),
        age: e ? (now - e.created) / 1000 : undefined,
      };
    });
    if (options.json) {
      process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      return;
    }
    const c = colorsFor(process.stdout);
    if (!rows.length) {
      process.stderr.write(`no keys under "${cache.prefix}:"${pattern ? ` matching ${pattern}` : ''} in ${describeStore(config.store)}\n`);
      return;
    }
    process.stdout.write(
      `${fmt.table(
        [
          { header: 'key', shrink: 'middle', min: 20 },
          { header: 'kind', color: (s) => c.cyan(s) },
          { header: 'size', align: 'right' },
          { header: 'ttl left', align: 'right' },
          { header: 'age', align: 'right' },
          { header: 'name / url', shrink: 'end', shrinkOrder: 1, min: 16 },
        ],
        rows.map((r, i) => [r.key, r.kind, r.size === undefined ? '(gone)' : fmt.size(r.size), fmt.seconds(r.ttlLeft), r.age === undefined ? '-' : fmt.seconds(r.age), about(infos[i])]),
        c,
        tableWidth(process.stdout, options.wide),
      )}\n${c.dim(`${rows.length} key${rows.length === 1 ? '' : 's'}`)}\n`,
    );
  });
}

/** Why an entry is not valid now, or undefined when it is (unexpired, every tag at its stamped version). */
function invalidity(e: Entry, versions: Map<string, string | undefined>, prefix: string, now: number): string | undefined {
  if (e.expires !== null && e.expires <= now) return `expired ${fmt.seconds((now - e.expires) / 1000)} ago`;
  const tags = e.tags ?? [];
  for (let i = 0; i < tags.length; i += 2) {
    const [k, v] = [tags[i], tags[i + 1]];
    const current = versions.get(k);
    if (current !== v) return `invalidated (${describeTag(k.slice(prefix.length + 5))} ${current === undefined ? 'has no version' : 'changed'})`;
  }
  return undefined;
}

/** `fragcache inspect <name> [vary…]`. */
export async function inspect(name: string, vary: string[], options: ConfigFlags & { json?: boolean }): Promise<void> {
  const values = parseVary(vary, options.json);
  await withCache(options, async (cache) => {
    const under = `${cache.base}f:${namePart(name)}/`;
    // All the vary values (exact, hashed or not), or the first few of them (verbatim keys: the encoding is a concatenation).
    const exact = values.length ? varyPart(values) : undefined;
    const start = values.length ? `=${values.map((v) => encodeValue(v)).join('')}` : undefined;
    const found = await scan(cache, under, (k) => {
      if (!exact) return true;
      const part = keyInfo(k, cache.prefix, cache.version).varyPart ?? '';
      return part === exact || part.startsWith(start!);
    });
    const entries = await read(cache, found);
    // Tag versions are read, never created: inspecting must not change what it looks at.
    const tagKeys = [...new Set(entries.flatMap((e) => (e ? tagKeysOf(e) : [])))];
    const tagEntries = await read(cache, tagKeys);
    const versions = new Map(tagKeys.map((k, i) => [k, tagEntries[i]?.body]));
    const now = Date.now();
    const own = new Set([`n/${namePart(name)}`]);
    const items = found
      .map((key, i) => ({ key, info: keyInfo(key, cache.prefix, cache.version, entries[i]), e: entries[i] }))
      .filter((x): x is { key: string; info: KeyInfo; e: Entry } => x.e !== undefined)
      .map(({ key, info, e }) => {
        const ids = tagKeysOf(e).map((k) => k.slice(cache.prefix.length + 5));
        const why = invalidity(e, versions, cache.prefix, now);
        return {
          key,
          name,
          digest: info.digest,
          vary: info.vary ?? null,
          varyHashed: info.vary === undefined,
          varyPreview: info.varyPreview,
          valid: !why,
          reason: why,
          created: new Date(e.created).toISOString(),
          age: (now - e.created) / 1000,
          ttlLeft: ttlLeft(e, now),
          size: e.body.length,
          bytes: Buffer.byteLength(e.body),
          cost: e.cost,
          tags: ids.filter((id) => id.startsWith('t/')).map((id) => describeTag(id).replace(/^tag:/, '')),
          contains: [...new Set(ids.filter((id) => id.startsWith('n/') && !own.has(id)).map((id) => id.slice(2)))],
        };
      });
    if (!items.length) {
      throw new CliError(`no stored entries for fragment "${name}"${values.length ? ` with vary ${fmt.vary(values, 200)}` : ''} (looked under ${under})${!options.json && vary.some((v) => /^(-?\d|true$|false$|null$)/.test(v)) ? '; vary values are strings unless you add --json (then 7 is the number 7)' : ''}`);
    }
    if (options.json) {
      process.stdout.write(`${JSON.stringify(items, null, 2)}\n`);
      return;
    }
    const c: Colors = colorsFor(process.stdout);
    const blocks = items.map((it) => {
      const field = (label: string, value: string) => `  ${c.dim(label.padEnd(10))}  ${value}`;
      return [
        c.bold(it.key),
        field('vary', it.varyHashed ? (it.varyPreview ? `${it.varyPreview} ${c.dim('(hashed in the key)')}` : c.dim('(hashed: long or non-ASCII values)')) : it.vary!.length ? fmt.vary(it.vary!, 200) : c.dim('(none)')),
        field('valid', it.valid ? c.green('yes') : c.red(`no: ${it.reason}`)),
        field('created', `${it.created} (${fmt.seconds(it.age)} ago)`),
        field('ttl left', fmt.seconds(it.ttlLeft)),
        field('size', `${fmt.size(it.bytes)} (${it.size} characters)`),
        field('cost', it.cost === undefined ? '-' : `${it.cost} ms to render`),
        field('tags', it.tags.length ? it.tags.join(', ') : c.dim('(none)')),
        field('contains', it.contains.length ? it.contains.join(', ') : c.dim('(no nested fragments)')),
      ].join('\n');
    });
    process.stdout.write(`${blocks.join('\n\n')}\n`);
  });
}

/** `fragcache invalidate <name> [vary…]` or `fragcache invalidate --tag <tag…>`. */
export async function invalidate(
  name: string | undefined,
  vary: string[],
  options: ConfigFlags & { tag?: string[] | true; json?: boolean },
  cmd?: Command,
): Promise<void> {
  const usage = (msg: string): never => {
    if (cmd) cmd.error(`error: ${msg}`, { exitCode: 2, code: 'fragcache.usage' });
    throw new CliError(msg, 2);
  };
  // `--tag` parses its values as optional, so that `--tag --prefix x` leaves --prefix an option: then no tag was given.
  if (options.tag === true) {
    usage('option \'-t, --tag <tag...>\' needs at least one tag name right after it (other options go before --tag or after its tags; write a tag that starts with "-" as --tag=-x)');
  }
  const tags = options.tag === true ? undefined : options.tag;
  if (tags && name !== undefined) usage('give a fragment name or --tag, not both');
  if (!tags && name === undefined) usage('missing fragment name (or --tag <tag…>)');
  const values = parseVary(vary, options.json);
  await withCache(options, async (cache) => {
    if (tags) {
      await cache.invalidateTag(...tags);
      process.stdout.write(`invalidated everything tagged ${tags.map((t) => JSON.stringify(t)).join(', ')}\n`);
      return;
    }
    // Only when something matches: an invalidation writes a version record, which a typo would leave behind.
    if (cache.store.keys) await mustMatch(cache, name!, values, vary, options.json);
    else process.stderr.write(`note: the ${cache.store.kind} store cannot list its keys, so whether any stored entry matched is not known\n`);
    if (values.length) {
      await cache.invalidate(name!, values);
      process.stdout.write(`invalidated fragment "${name}" with vary ${fmt.vary(values, 200)} (and every fragment containing it)\n`);
    } else {
      await cache.invalidate(name!);
      process.stdout.write(`invalidated fragment "${name}", every variant (and every fragment containing one)\n`);
    }
  });
}

/** A vary tuple with each value's type visible: `7`, `"7"`, `true`, `null`, `2026-11-20T10:00:00.000Z (date)`. */
function typed(values: readonly unknown[]): string {
  return values.map((v) => (v instanceof Date ? `${v.toISOString()} (date)` : fmt.vary([v], 60))).join(', ');
}

/**
 * Fails (exit 1, nothing written) when no stored entry of fragment `name` (with exactly these vary values, if
 * given) exists, listing the variants that do exist with their typed values.
 */
async function mustMatch(cache: FragmentCache, name: string, values: unknown[], raw: readonly string[], json: boolean | undefined): Promise<void> {
  const under = `${cache.base}f:${namePart(name)}/`;
  const found = await scan(cache, under);
  const exact = values.length ? varyPart(values) : undefined;
  let parts = found.map((k) => keyInfo(k, cache.prefix, cache.version));
  if (exact === undefined ? found.length : parts.some((p) => p.varyPart === exact)) return;
  if (parts.some((p) => !p.vary)) {
    const entries = await read(cache, found); // hashed vary parts: the readable form is stored with the entry
    parts = found.map((k, i) => keyInfo(k, cache.prefix, cache.version, entries[i]));
  }
  let msg = `no stored entry of fragment "${name}"${values.length ? ` with vary ${typed(values)}` : ''} (looked under ${under}): nothing was invalidated`;
  if (found.length) {
    const variants = [...new Map(parts.map((p) => [p.varyPart ?? '', p])).values()];
    const shown = variants.slice(0, 20).map((p) => `  ${p.vary ? (p.vary.length ? typed(p.vary) : '(no vary values)') : p.varyPreview ? `${p.varyPreview} (hashed in the key)` : `(hashed: ${p.varyPart})`}`);
    if (variants.length > 20) shown.push(`  … and ${variants.length - 20} more (fragcache keys ${name})`);
    msg += `. Stored variants of "${name}":\n${shown.join('\n')}`;
    if (!json && raw.some((v) => /^(-?\d|true$|false$|null$)/.test(v))) msg += '\nVary values are strings unless you add --json (then 7 is the number 7, "7" the string).';
  } else {
    const names = new Set((await scan(cache, `${cache.base}f:`)).map((k) => keyInfo(k, cache.prefix, cache.version).name).filter((n): n is string => !!n));
    msg += names.size ? `. Stored fragment names: ${[...names].sort().slice(0, 30).join(', ')}` : '. The store holds no fragments under this prefix.';
  }
  throw new CliError(msg);
}

/** `fragcache stats`: what the store holds under the prefix. */
export async function stats(options: ConfigFlags & { json?: boolean; wide?: boolean }): Promise<void> {
  await withCache(options, async (cache, config) => {
    const found = await scan(cache, `${cache.prefix}:`);
    const entries = await read(cache, found);
    const now = Date.now();
    type Agg = { entries: number; bytes: number; expired: number };
    const kinds: Record<string, Agg> = {};
    const fragments: Record<string, Agg> = {};
    const pages: Record<string, Agg> = {};
    const add = (map: Record<string, Agg>, k: string, e: Entry) => {
      const a = (map[k] ??= { entries: 0, bytes: 0, expired: 0 });
      a.entries++;
      a.bytes += Buffer.byteLength(e.body);
      if (e.expires !== null && e.expires <= now) a.expired++;
    };
    found.forEach((key, i) => {
      const e = entries[i];
      if (!e) return; // expired between the scan and the read
      const info = keyInfo(key, cache.prefix, cache.version, e);
      add(kinds, info.kind, e);
      if (info.kind === 'fragment') add(fragments, info.name!, e);
      if (info.kind === 'page') add(pages, info.url ?? '(hashed URL)', e);
    });
    const result = { store: describeStore(config.store), prefix: cache.prefix, version: cache.version, keys: found.length, kinds, fragments, pages };
    if (options.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    const c = colorsFor(process.stdout);
    const row = (label: string, a: Agg) => [label, String(a.entries), fmt.size(a.bytes), a.expired ? String(a.expired) : ''];
    const cols = [{ header: '' }, { header: 'entries', align: 'right' as const }, { header: 'bytes', align: 'right' as const }, { header: 'expired', align: 'right' as const }];
    const width = tableWidth(process.stdout, options.wide);
    let out = `${c.bold(result.store)}  prefix ${result.prefix}:  version ${result.version}  ${found.length} keys\n\n`;
    out += `${fmt.table(cols, Object.entries(kinds).map(([k, a]) => row(k, a)), c)}\n`;
    if (Object.keys(fragments).length) {
      out += `\n${fmt.table([{ header: 'fragment', shrink: 'end' }, ...cols.slice(1)], Object.entries(fragments).sort(([a], [b]) => a.localeCompare(b)).map(([k, a]) => row(k, a)), c, width)}\n`;
    }
    if (Object.keys(pages).length) {
      out += `\n${fmt.table([{ header: 'page', shrink: 'middle' }, ...cols.slice(1)], Object.entries(pages).sort(([a], [b]) => a.localeCompare(b)).map(([k, a]) => row(k, a)), c, width)}\n`;
    }
    process.stdout.write(out);
  });
}

/** `fragcache clear`: deletes every key under the prefix, in batches, with progress on a TTY. */
export async function clear(options: ConfigFlags): Promise<void> {
  await withCache(options, async (cache, config) => {
    let deleted: number | undefined;
    if (cache.store.keys) {
      const found = await scan(cache, `${cache.prefix}:`);
      const bar = progress();
      try {
        for (let i = 0; i < found.length; i += BATCH) {
          const batch = found.slice(i, i + BATCH);
          await cache.guard.run('deleteMany', () => cache.store.deleteMany(batch));
          bar.update(`deleting… ${Math.min(i + BATCH, found.length)}/${found.length}`);
        }
      } finally {
        bar.done();
      }
      deleted = found.length;
    } else {
      await cache.clear();
    }
    process.stdout.write(`cleared ${deleted === undefined ? 'every key' : `${deleted} key${deleted === 1 ? '' : 's'}`} under "${cache.prefix}:" in ${describeStore(config.store)}\n`);
  });
}
