/**
 * CLI configuration: `fragcache.config.js`, `fragcache.config.json` or the `fragcache` key of
 * `package.json` (the first found, in that order, in the working directory), then `FRAGCACHE_STORE`,
 * then command-line flags, each overriding the one before.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { OptionError } from '../errors';
import type { StoreSpec } from '../stores';
import { CliError } from './io';

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
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`, 1, { cause: err });
  }
}

/** Loads the file configuration: the explicit `--config` file, else the first of the usual places. */
function fileConfig(cwd: string, explicit: string | undefined): { values: Record<string, unknown>; source: string; dir: string } {
  const load = (file: string): Record<string, unknown> => {
    let value: unknown;
    if (/\.[cm]?js$/.test(file)) {
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const mod = require(file) as { default?: unknown };
        value = mod && typeof mod === 'object' && 'default' in mod ? mod.default : mod;
      } catch (err) {
        throw new CliError(`cannot load ${path.relative(cwd, file) || file}: ${(err as Error).message}`, 1, { cause: err });
      }
    } else value = readJson(file);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new CliError(`${path.relative(cwd, file) || file}: expected an object of options (${KEYS.join(', ')})`);
    }
    return value as Record<string, unknown>;
  };
  if (explicit) {
    const file = path.resolve(cwd, explicit);
    if (!existsSync(file)) throw new CliError(`config file not found: ${explicit}`);
    return { values: load(file), source: path.relative(cwd, file) || file, dir: path.dirname(file) };
  }
  for (const name of ['fragcache.config.js', 'fragcache.config.cjs', 'fragcache.config.json']) {
    const file = path.join(cwd, name);
    if (existsSync(file)) return { values: load(file), source: name, dir: cwd };
  }
  const pkg = path.join(cwd, 'package.json');
  if (existsSync(pkg)) {
    const json = readJson(pkg) as { fragcache?: unknown };
    if (json && typeof json === 'object' && json.fragcache !== undefined) {
      if (typeof json.fragcache !== 'object' || json.fragcache === null || Array.isArray(json.fragcache)) {
        throw new CliError(`package.json: the "fragcache" key must be an object of options (${KEYS.join(', ')})`);
      }
      return { values: json.fragcache as Record<string, unknown>, source: 'package.json "fragcache"', dir: cwd };
    }
  }
  return { values: {}, source: 'defaults', dir: cwd };
}

/** Resolves the configuration for one command. Throws {@link OptionError} naming the bad option. */
export function loadConfig(flags: ConfigFlags = {}, cwd = process.cwd()): CliConfig {
  const { values, source, dir } = fileConfig(cwd, flags.config);
  for (const k of Object.keys(values)) {
    if (!(KEYS as readonly string[]).includes(k)) throw new CliError(`${source}: unknown option "${k}" (options: ${KEYS.join(', ')})`);
  }
  const opt = (name: string) => `${source}: ${name}`;
  let views: string[];
  const v = flags.views ?? values.views ?? 'templates';
  if (typeof v === 'string') views = [v];
  else if (Array.isArray(v) && v.length && v.every((x) => typeof x === 'string')) views = v as string[];
  else throw new OptionError(flags.views !== undefined ? '--views' : opt('views'), v, 'expected a folder or a list of folders');
  // Views from a config file are relative to that file; from a flag, to the working directory.
  views = views.map((x) => path.resolve(flags.views !== undefined ? cwd : dir, x));

  const envStore = process.env.FRAGCACHE_STORE || undefined;
  const store = (flags.store ?? envStore ?? values.store ?? 'memory') as StoreSpec;
  if (typeof store !== 'string' && (typeof store !== 'object' || store === null)) {
    throw new OptionError(opt('store'), store, 'expected a store URL ("memory", "redis://…", "sqlite://…") or a store object');
  }
  const prefix = flags.prefix ?? values.prefix ?? 'fc';
  if (typeof prefix !== 'string') throw new OptionError(opt('prefix'), prefix, 'expected a string');
  const version = values.version ?? 1;
  if (typeof version !== 'number' && typeof version !== 'string') throw new OptionError(opt('version'), version, 'expected a number or a string');
  const syntax = flags.syntax ?? values.syntax ?? 'angle';
  if (syntax !== 'angle' && syntax !== 'curly') {
    throw new OptionError(flags.syntax !== undefined ? '--syntax' : opt('syntax'), syntax, 'expected "angle" or "curly"');
  }
  return { views, store, prefix, version, syntax, source };
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
