/**
 * CLI configuration: `fragcache.config.js`, `fragcache.config.json` or the `fragcache` key of
 * `package.json` (the first found, in that order, in the working directory), then `FRAGCACHE_STORE`,
 * then command-line flags, each overriding the one before.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, OptionError } from '../errors';
import type { StoreSpec } from '../stores';
import { parseJson } from './data';
import { CliError, positionAt, shownPath, type SourcePosition } from './io';

/** What the CLI needs to build an engine or open a store. */
export interface CliConfig {
  views: string[];
  /** Store spec (URL string, or a Store/Keyv from a JS config). */
  store: StoreSpec;
  prefix: string;
  version: number | string;
  syntax: 'angle' | 'curly';
  /** Where the configuration came from (for messages). */
  source: string;
  /** Where the store came from: `--store`, `FRAGCACHE_STORE`, the config file (its name), or `default`. */
  storeSource: string;
}

/** Flags that override the configuration. */
export interface ConfigFlags {
  config?: string;
  views?: string | string[];
  store?: string;
  prefix?: string;
  syntax?: string;
}

const KEYS = ['views', 'store', 'prefix', 'version', 'syntax'] as const;

function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${shownPath(file)}: ${(err as Error).message}`, 1, { cause: err });
  }
  return parseJson(file, text);
}

/** Where a JS config's error is: a stack frame in that file, or the `file:line` header of a SyntaxError. */
function stackPosition(err: unknown, file: string): SourcePosition | undefined {
  const stack = err instanceof Error ? String(err.stack) : '';
  const esc = file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const syntax = new RegExp(`^${esc}:(\\d+)\\n[^\\n]*\\n( *)\\^`).exec(stack);
  if (syntax) return { file, line: Number(syntax[1]), column: syntax[2].length + 1 };
  const frame = new RegExp(`${esc}:(\\d+):(\\d+)`).exec(stack);
  return frame ? { file, line: Number(frame[1]), column: Number(frame[2]) } : undefined;
}

/** The file configuration, where it came from, and how to point at one of its options. */
interface FileConfig {
  values: Record<string, unknown>;
  /** For messages: the file name, `package.json "fragcache"`, or `defaults`. */
  source: string;
  dir: string;
  /** The file and its text, for JSON files (option errors then quote the line). */
  file?: string;
  text?: string;
}

/** Loads the file configuration: the explicit `--config` file, else the first of the usual places. */
function fileConfig(cwd: string, explicit: string | undefined): FileConfig {
  const load = (file: string): Record<string, unknown> => {
    let value: unknown;
    if (/\.[cm]?js$/.test(file)) {
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const mod = require(file) as { default?: unknown };
        value = mod && typeof mod === 'object' && 'default' in mod ? mod.default : mod;
      } catch (err) {
        const at = stackPosition(err, file);
        const where = at ? `${shownPath(file)}:${at.line}:${at.column}` : shownPath(file);
        throw new CliError(`${where}: cannot load the config: ${(err as Error).message}`, 1, { cause: err, at });
      }
    } else value = readJson(file);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new CliError(`${shownPath(file)}: expected an object of options (${KEYS.join(', ')})`);
    }
    return value as Record<string, unknown>;
  };
  const text = (file: string) => (/\.json$/.test(file) ? readFileSync(file, 'utf8') : undefined);
  if (explicit) {
    const file = path.resolve(cwd, explicit);
    if (!existsSync(file)) throw new CliError(`config file not found: ${explicit}`);
    return { values: load(file), source: shownPath(file), dir: path.dirname(file), file, text: text(file) };
  }
  for (const name of ['fragcache.config.js', 'fragcache.config.cjs', 'fragcache.config.json']) {
    const file = path.join(cwd, name);
    if (existsSync(file)) return { values: load(file), source: name, dir: cwd, file, text: text(file) };
  }
  const pkg = path.join(cwd, 'package.json');
  if (existsSync(pkg)) {
    const json = readJson(pkg) as { fragcache?: unknown };
    if (json && typeof json === 'object' && json.fragcache !== undefined) {
      const fc = { source: 'package.json "fragcache"', dir: cwd, file: pkg, text: readFileSync(pkg, 'utf8') };
      if (typeof json.fragcache !== 'object' || json.fragcache === null || Array.isArray(json.fragcache)) {
        throw new CliError(`${where(fc, undefined)}: the "fragcache" key must be an object of options (${KEYS.join(', ')})`, 1, { at: keyPosition(fc, undefined) });
      }
      return { ...fc, values: json.fragcache as Record<string, unknown> };
    }
  }
  return { values: {}, source: 'defaults', dir: cwd };
}

/**
 * Where an option is written in a JSON config (the first `"name":` in it; in package.json, after
 * `"fragcache"`), or undefined. `name` undefined: the `"fragcache"` key itself.
 */
function keyPosition(fc: Pick<FileConfig, 'file' | 'text' | 'source'>, name: string | undefined): SourcePosition | undefined {
  if (!fc.file || fc.text === undefined) return undefined;
  const inPkg = fc.source.startsWith('package.json');
  const from = inPkg && name !== undefined ? Math.max(0, fc.text.search(/"fragcache"\s*:/)) : 0;
  const key = name ?? 'fragcache';
  const re = new RegExp(`${JSON.stringify(key).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*:`, 'g');
  re.lastIndex = from;
  const m = re.exec(fc.text);
  if (!m) return undefined;
  return { file: fc.file, ...positionAt(fc.text, m.index) };
}

/** `file:line:column` of an option in a JSON config (else the source's name), for messages. */
function where(fc: Pick<FileConfig, 'file' | 'text' | 'source'>, name: string | undefined): string {
  const at = keyPosition(fc, name);
  return at ? `${shownPath(at.file)}:${at.line}:${at.column}` : fc.source;
}

/**
 * Resolves the configuration for one command. A bad flag value throws {@link OptionError} naming the flag;
 * a bad config file value a {@link CliError} naming the file, the line (JSON files) and the option.
 */
export function loadConfig(flags: ConfigFlags = {}, cwd = process.cwd()): CliConfig {
  const fc = fileConfig(cwd, flags.config);
  const { values, source, dir } = fc;
  const bad: (name: string, value: unknown, expected: string) => never = (name, value, expected) => {
    throw new CliError(`${where(fc, name)}: option "${name}": ${expected}, got ${describe(value)}`, 1, { at: keyPosition(fc, name) });
  };
  for (const k of Object.keys(values)) {
    if (!(KEYS as readonly string[]).includes(k)) throw new CliError(`${where(fc, k)}: unknown option "${k}" (options: ${KEYS.join(', ')})`, 1, { at: keyPosition(fc, k) });
  }
  let views: string[];
  const v = flags.views ?? values.views ?? 'templates';
  if (typeof v === 'string') views = [v];
  else if (Array.isArray(v) && v.length && v.every((x) => typeof x === 'string')) views = v as string[];
  else if (flags.views !== undefined) throw new OptionError('--views', v, 'expected a folder or a list of folders');
  else bad('views', v, 'expected a folder or a list of folders');
  // Views from a config file are relative to that file; from a flag, to the working directory.
  views = views.map((x) => path.resolve(flags.views !== undefined ? cwd : dir, x));

  const envStore = process.env.FRAGCACHE_STORE || undefined;
  const store = (flags.store ?? envStore ?? values.store ?? 'memory') as StoreSpec;
  const storeSource = flags.store !== undefined ? '--store' : envStore !== undefined ? 'FRAGCACHE_STORE' : values.store !== undefined ? source : 'default';
  if (typeof store !== 'string' && (typeof store !== 'object' || store === null)) {
    bad('store', store, 'expected a store URL ("memory", "redis://…", "sqlite://…") or a store object');
  }
  const prefix = flags.prefix ?? values.prefix ?? 'fc';
  if (typeof prefix !== 'string') bad('prefix', prefix, 'expected a string');
  const version = values.version ?? 1;
  if (typeof version !== 'number' && typeof version !== 'string') bad('version', version, 'expected a number or a string');
  const syntax = flags.syntax ?? values.syntax ?? 'angle';
  if (syntax !== 'angle' && syntax !== 'curly') {
    if (flags.syntax !== undefined) throw new OptionError('--syntax', syntax, 'expected "angle" or "curly"');
    bad('syntax', syntax, 'expected "angle" or "curly"');
  }
  return { views, store, prefix, version, syntax, source, storeSource };
}

/** A short, password-free description of a store spec for messages. */
export function describeStore(spec: StoreSpec): string {
  if (typeof spec !== 'string') return `the ${(spec as { kind?: string }).kind ?? 'configured'} store`;
  try {
    const u = new URL(spec);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return spec;
  }
}

/** True for the in-process store, which another process cannot see. */
export function isMemory(spec: StoreSpec): boolean {
  if (typeof spec === 'string') return spec === 'memory' || spec.toLowerCase().startsWith('memory:');
  return (spec as { kind?: string }).kind === 'memory';
}
