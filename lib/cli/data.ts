/**
 * Template data from a JSON or YAML file.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { CliError } from './io';

/** Reads a `.json`, `.yaml` or `.yml` file holding an object (the template context). */
export function loadData(file: string): Record<string, unknown> {
  const shown = path.relative(process.cwd(), file) || file;
  if (!existsSync(file)) throw new CliError(`data file not found: ${shown}`);
  const ext = path.extname(file).toLowerCase();
  if (!['.json', '.yaml', '.yml'].includes(ext)) throw new CliError(`data file ${shown}: expected a .json, .yaml or .yml file`);
  const text = readFileSync(file, 'utf8');
  let value: unknown;
  if (ext === '.json') {
    try {
      value = text.trim() ? JSON.parse(text) : {};
    } catch (err) {
      throw new CliError(`data file ${shown}: invalid JSON: ${(err as Error).message}`, 1, { cause: err });
    }
  } else {
    const doc = YAML.parseDocument(text, { prettyErrors: true });
    if (doc.errors.length) {
      const e = doc.errors[0];
      const at = e.linePos?.[0];
      throw new CliError(`data file ${shown}${at ? `:${at.line}:${at.col}` : ''}: invalid YAML: ${e.message.split('\n')[0]}`, 1, { cause: e });
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
