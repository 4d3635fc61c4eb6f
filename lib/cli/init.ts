/**
 * `fragcache init`: copies the package's example templates (a page with cached fragments, a layout, partials and
 * a data file) into `views/`, and points a new `fragcache.config.json` at them, so that every example of
 * `--help` works in an empty folder.
 * @module
 */
import { cpSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CliError, shownPath } from './io';

/** The example templates shipped with the package (`templates/` next to `dist/`). */
const EXAMPLES = path.join(__dirname, '..', '..', 'templates');

/** Config files the CLI reads (a folder with one of them already has a configuration). */
const CONFIGS = ['fragcache.config.js', 'fragcache.config.cjs', 'fragcache.config.json'];

function hasPackageConfig(cwd: string): boolean {
  try {
    return existsSync(path.join(cwd, 'package.json')) && 'fragcache' in (require(path.join(cwd, 'package.json')) as object);
  } catch {
    return false;
  }
}

/** Lists files under a folder, relative to it (for the summary). */
function files(dir: string, base = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? files(path.join(dir, d.name), base) : [path.relative(base, path.join(dir, d.name))]));
}

/** `fragcache init [dir]`. */
export function init(dir: string | undefined, options: { force?: boolean }): void {
  const cwd = process.cwd();
  const target = path.resolve(cwd, dir ?? 'views');
  if (existsSync(target) && readdirSync(target).length && !options.force) {
    throw new CliError(`${shownPath(target)} already exists and is not empty: give another folder (fragcache init site/views), or add --force to write the examples into it (same-named files are replaced)`);
  }
  cpSync(EXAMPLES, target, { recursive: true, force: true });
  const rel = path.relative(cwd, target).split(path.sep).join('/') || '.';
  const written = files(target).map((f) => `  ${rel}/${f.split(path.sep).join('/')}`);
  let config = '';
  if (!CONFIGS.some((f) => existsSync(path.join(cwd, f))) && !hasPackageConfig(cwd)) {
    writeFileSync(path.join(cwd, 'fragcache.config.json'), `${JSON.stringify({ views: rel }, null, 2)}\n`);
    written.push('  fragcache.config.json');
  } else config = `\n(an existing configuration was kept: add --views ${rel} to the commands, or "views": "${rel}" to it)`;
  process.stdout.write(
    `wrote\n${written.join('\n')}${config}\n\nTry:\n` +
      `  fragcache preview page.njk --data ${rel}/data/page.yaml --explain   # the HTML, and each fragment's hit or miss\n` +
      `  fragcache serve                                                  # http://127.0.0.1:3000/page\n` +
      `  fragcache deps page.njk                                          # the templates and fragments of a page\n`,
  );
}
