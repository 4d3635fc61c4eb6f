/**
 * Template data from a JSON or YAML file, and JSON files read with the position of their first error.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseJsonc, type ParseError } from 'jsonc-parser';
import YAML from 'yaml';
import { CliError, positionAt, shownPath } from './io';

/**
 * Offset of the first syntax error in a JSON text, or undefined when it parses. V8's messages give none for some
 * errors (`Unexpected token '}', "…" is not valid JSON`); jsonc-parser, in strict mode, reports where.
 */
export function jsonErrorOffset(text: string): number | undefined {
  const errors: ParseError[] = [];
  parseJsonc(text, errors, { allowTrailingComma: false, disallowComments: true, allowEmptyContent: false });
  return errors[0]?.offset;
}

/**
 * Parses a JSON file's text. A syntax error is a {@link CliError} `<what> file:line:column: invalid JSON: …`
 * that quotes the offending line.
 */
export function parseJson(file: string, text: string, what = ''): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    // V8: "Unexpected token '}', "{"a":}" is not valid JSON" / "… in JSON at position 11": keep the reason only.
    const reason = (err as Error).message.replace(/, (?:\.\.\.)?"[\s\S]*"(?:\.\.\.)? is not valid JSON$/, '').replace(/ in JSON at position \d+.*$/s, '');
    const offset = jsonErrorOffset(text);
    if (offset === undefined) throw new CliError(`${what}${shownPath(file)}: invalid JSON: ${reason}`, 1, { cause: err });
    // An error at the end of the input points just after the last character, not at an empty last line.
    const { line, column } = positionAt(text, Math.min(offset, text.trimEnd().length));
    throw new CliError(`${what}${shownPath(file)}:${line}:${column}: invalid JSON: ${reason}`, 1, { cause: err, at: { file, line, column } });
  }
}

/** Reads a `.json`, `.yaml` or `.yml` file holding an object (the template context). */
export function loadData(file: string): Record<string, unknown> {
  const shown = shownPath(file);
  if (!existsSync(file)) throw new CliError(`data file not found: ${shown}`);
  const ext = path.extname(file).toLowerCase();
  if (!['.json', '.yaml', '.yml'].includes(ext)) throw new CliError(`data file ${shown}: expected a .json, .yaml or .yml file`);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read data file ${shown}: ${(err as Error).message}`, 1, { cause: err });
  }
  let value: unknown;
  if (ext === '.json') {
    value = text.trim() ? parseJson(file, text, 'data file ') : {};
  } else {
    const doc = YAML.parseDocument(text, { prettyErrors: true });
    if (doc.errors.length) {
      const e = doc.errors[0];
      // prettyErrors appends " at line L, column C:" and a code frame; the position goes in front instead.
      const reason = e.message.replace(/ at line \d+, column \d+:[\s\S]*$/, '').split('\n')[0];
      const at = e.linePos?.[0];
      if (!at) throw new CliError(`data file ${shown}: invalid YAML: ${reason}`, 1, { cause: e });
      // An error at the end of the input (an unclosed bracket) points just after the last character.
      let { line, col } = at;
      const end = positionAt(text, text.trimEnd().length);
      if (line > end.line || (line === end.line && col > end.column)) ({ line, column: col } = end);
      throw new CliError(`data file ${shown}:${line}:${col}: invalid YAML: ${reason}`, 1, { cause: e, at: { file, line, column: col } });
    }
    value = doc.toJS() ?? {};
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new CliError(`data file ${shown}: expected an object (a mapping of names to values) at the top level`);
  }
  return value as Record<string, unknown>;
}

/** The data file that goes with a template: `<dir>/<template path without extension>.{json,yaml,yml}`. */
export function dataFileFor(dataDir: string, template: string): string | undefined {
  const base = template.replace(/\.[^./\\]+$/, '');
  for (const ext of ['.json', '.yaml', '.yml']) {
    const f = path.join(dataDir, base + ext);
    if (existsSync(f)) return f;
  }
  return undefined;
}
