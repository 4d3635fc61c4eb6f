/**
 * Terminal output of the CLI: colours only on a TTY (NO_COLOR and FORCE_COLOR honoured), and the
 * user-facing form of errors (file:line:column, the offending line, never a stack trace unless `--debug`).
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pc from 'picocolors';
import { FragcacheError, TemplateError } from '../errors';

/** The colour functions of picocolors, enabled or not. */
export type Colors = ReturnType<typeof pc.createColors>;

/** Colours for a stream: on when it is a TTY, unless NO_COLOR is set (or forced with FORCE_COLOR). */
export function colorsFor(stream: NodeJS.WriteStream): Colors {
  const env = process.env;
  // picocolors' own default turns colours on whenever CI is set; we want "TTY only", as the issue asks.
  const force = env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '0';
  const on = force || (!('NO_COLOR' in env) && Boolean(stream.isTTY) && env.TERM !== 'dumb');
  return pc.createColors(on);
}

/**
 * The width tables must fit in on this stream: the terminal's columns, else `COLUMNS` when set, else none (a
 * pipe or file gets whole lines). `wide` (the `--wide` flag) turns fitting off.
 */
export function tableWidth(stream: NodeJS.WriteStream, wide?: boolean): number | undefined {
  if (wide) return undefined;
  if (stream.isTTY && stream.columns > 0) return stream.columns;
  const env = Number(process.env.COLUMNS);
  return Number.isSafeInteger(env) && env > 0 ? env : undefined;
}

/** A place in a file (1-based line and column), for quoting the offending line under an error. */
export interface SourcePosition {
  file: string;
  line: number;
  column?: number;
}

/**
 * An error of the user's making (a missing file, a bad option, a store that cannot do this): exit 1, no stack.
 * With `at`, the message starts with `file:line:column: ` and the offending line is quoted under it.
 */
export class CliError extends FragcacheError {
  /** Where in a file the error is (the message already names it). */
  readonly at?: SourcePosition;

  constructor(
    message: string,
    /** Process exit code: 1 for user errors, 2 for usage errors. */
    readonly exitCode: 1 | 2 = 1,
    options?: { cause?: unknown; at?: SourcePosition },
  ) {
    super(message, options);
    this.at = options?.at;
  }
}

/** Line and column (1-based) of a character offset in a text. */
export function positionAt(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.max(0, Math.min(offset, text.length)));
  const nl = before.lastIndexOf('\n');
  return { line: before.split('\n').length, column: before.length - nl };
}

/** A file name as messages show it: relative to the working directory. */
export function shownPath(file: string): string {
  return path.relative(process.cwd(), file) || file;
}

/** Finds a template under the views (first match), for quoting the offending line. */
function locate(template: string, views: readonly string[]): string | undefined {
  if (path.isAbsolute(template)) return existsSync(template) ? template : undefined;
  for (const v of views) {
    const p = path.join(v, template);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** The line `line` (1-based) of a file, with a caret under `column`, or undefined when unreadable. */
export function excerpt(file: string, line: number, column: number | undefined, c: Colors): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split(/\r?\n/);
  const src = lines[line - 1];
  if (src === undefined) return undefined;
  const gutter = String(line);
  const pad = ' '.repeat(gutter.length);
  const caret = column !== undefined && column > 0 ? `\n ${pad} ${c.dim('|')} ${' '.repeat(column - 1)}${c.red('^')}` : '';
  return ` ${c.dim(gutter)} ${c.dim('|')} ${src}${caret}`;
}

/** Renders an error for the terminal. `views` locates templates; `debug` adds stacks (with causes). */
export function formatError(err: unknown, options: { views?: readonly string[]; debug?: boolean; colors: Colors }): string {
  const c = options.colors;
  const label = c.red(c.bold('error'));
  let out: string;
  if (err instanceof TemplateError && err.template && err.line !== undefined) {
    const file = locate(err.template, options.views ?? []);
    const shown = file ? path.relative(process.cwd(), file) || file : err.template;
    // The message starts with "template:line:column: "; show the file as the user can open it.
    const detail = err.message.replace(/^[^\n]*?:\d+(?::\d+)?: /, '');
    const where = [shown, err.line, err.column].filter((x) => x !== undefined).join(':');
    out = `${label}: ${c.bold(where)}: ${detail}`;
    const ex = file ? excerpt(file, err.line, err.column, c) : undefined;
    if (ex) out += `\n${ex}`;
  } else if (err instanceof CliError && err.at) {
    out = `${label}: ${err.message}`;
    const ex = excerpt(err.at.file, err.at.line, err.at.column, c);
    if (ex) out += `\n${ex}`;
  } else if (err instanceof FragcacheError) {
    out = `${label}: ${err.message}`;
  } else {
    const e = err as Error;
    out = `${label}: ${e?.message ?? String(err)}`;
    if (!options.debug) out += `\n${c.dim('(an unexpected error: run again with --debug for the stack trace)')}`;
  }
  if (options.debug) {
    let e: unknown = err;
    for (let depth = 0; e instanceof Error && depth < 5; depth++, e = e.cause) out += `\n${c.dim(depth ? `caused by: ${e.stack}` : String(e.stack))}`;
  }
  return out;
}

/**
 * A progress line on stderr, shown only on a TTY (pipes and logs get nothing), redrawn at most every
 * 100 ms. `done()` erases it.
 */
export function progress(stream: NodeJS.WriteStream = process.stderr): { update(text: string): void; done(): void } {
  if (!stream.isTTY) return { update: () => undefined, done: () => undefined };
  let last = 0;
  let shown = false;
  return {
    update(text) {
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      shown = true;
      stream.write(`\r\x1b[2K${text}`);
    },
    done() {
      if (shown) stream.write('\r\x1b[2K');
    },
  };
}
