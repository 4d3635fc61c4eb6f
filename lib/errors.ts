/**
 * Typed errors. Every error fragcache raises is a {@link FragcacheError}; catch the subclass you can act on.
 * @module
 */

/** Base class of every error raised by fragcache. */
export class FragcacheError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An option given to fragcache (engine, store, cache call) has a bad value. Names the option and the value. */
export class OptionError extends FragcacheError {
  constructor(
    /** The option's name, e.g. `ttl` or `store`. */
    readonly option: string,
    /** The value that was given. */
    readonly value: unknown,
    expected: string,
  ) {
    super(`option "${option}": ${expected}, got ${describe(value)}`);
  }
}

/**
 * A template failed to compile or render. `template`, `line` and `column` say where (1-based, as editors
 * count); `cause` is the original error where there is one.
 */
export class TemplateError extends FragcacheError {
  constructor(
    message: string,
    readonly template: string | undefined,
    readonly line: number | undefined,
    readonly column: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A `cache` tag was given a bad value at render time (a negative TTL, tags that are not strings…).
 * Raised inside the template, so it reaches you as a {@link TemplateError} whose `cause` is this.
 */
export class FragmentArgumentError extends FragcacheError {}

/**
 * A template needs asynchronous work (an async filter, extension or loader). fragcache renders each pass
 * synchronously so that no output is ever lost (see the README, "Design"); use a synchronous filter or
 * loader, or prepare the value before rendering.
 */
export class AsyncTemplateError extends FragcacheError {
  /**
   * @internal Where an error that arrives a tick after the render lands: a syntax error in a template included
   * in a cache body is reported that way by Nunjucks, and is then the real error to report.
   */
  late?: { error?: unknown };
}

/** A cache store failed or timed out. Reported through the `error` event; thrown only by invalidations. */
export class StoreError extends FragcacheError {
  constructor(
    message: string,
    /** The store's name (`memory`, `redis`, …). */
    readonly store: string,
    /** The store operation, e.g. `getMany`. */
    readonly operation: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A store operation took longer than its time budget (`timeout`). */
export class StoreTimeoutError extends StoreError {}

/**
 * A store operation was skipped or cut short because its request had already waited its whole store-time
 * budget (`requestBudget`) on the store. Reported through the `error` event; not a store failure (it does not
 * count towards opening the circuit).
 */
export class StoreBudgetError extends StoreTimeoutError {}

/**
 * A store replied with an entry written under another key than the one asked for: the connection is out of
 * step (a garbled reply, a faulty proxy). The entry is not served; the store drops that connection.
 */
export class StoreIntegrityError extends StoreError {}

/** A value cannot be part of a cache key (a function, a symbol, a cyclic object). */
export class KeyError extends FragcacheError {}

/**
 * A store needs an optional package that is not installed (`better-sqlite3` for `sqlite://`). The message says
 * what to install.
 */
export class MissingDependencyError extends FragcacheError {
  constructor(
    /** The package to install, e.g. `better-sqlite3`. */
    readonly packageName: string,
    /** What needs it, e.g. `the sqlite:// store`. */
    what: string,
    options?: { cause?: unknown },
  ) {
    super(`${what} needs the package ${packageName}, which is not installed: run \`npm install ${packageName}\` in your app`, options);
  }
}

/** Short, bounded description of a value for error messages. */
export function describe(value: unknown): string {
  if (typeof value === 'string') {
    const s = value.length > 60 ? `${value.slice(0, 57)}...` : value;
    return JSON.stringify(s);
  }
  if (value === undefined) return 'undefined';
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || typeof value === 'bigint') {
    return String(value);
  }
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return `a symbol (${value.toString()})`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value instanceof Date) return `the date ${value.toISOString?.() ?? 'Invalid Date'}`;
  return `an object (${Object.prototype.toString.call(value).slice(8, -1)})`;
}

/** A page cache call cannot do what was asked (an invalidation that would reach no cache, a misplaced middleware). */
export class PageCacheError extends FragcacheError {}
