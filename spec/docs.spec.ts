/**
 * The README and docs/ stay true to the code: every engine option is in the README's options table, and every
 * relative link points at a file of this repository (none outside it).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const read = (f: string) => readFileSync(path.join(ROOT, f), 'utf8');

test('every EngineOptions field has a row in the README engine options table', () => {
  const src = read('lib/engine.ts');
  const body = /export interface EngineOptions \{([\s\S]*?)\n\}/.exec(src)![1];
  const fields = [...body.matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]);
  expect(fields.length).toBeGreaterThan(10);
  const readme = read('README.md');
  const table = /^### Engine options\n([\s\S]*?)\n#/m.exec(readme)?.[1] ?? '';
  const rows = [...table.matchAll(/^\| `(\w+)` \|/gm)].map((m) => m[1]);
  expect(rows.sort()).toEqual([...fields].sort());
});

test('relative links in README.md and docs/*.md point at files inside the repository', () => {
  const files = ['README.md', 'CHANGELOG.md', ...readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const bad: string[] = [];
  for (const f of files) {
    const text = read(f);
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^(https?:|mailto:|#)/.test(target)) continue;
      const file = path.resolve(ROOT, path.dirname(f), target.split('#')[0]);
      if (!file.startsWith(ROOT + path.sep) || !existsSync(file)) bad.push(`${f}: ${target}`);
    }
    // Paths written as code that leave the repository (../something) are links outside it too.
    for (const [, p] of text.matchAll(/`(\.\.\/[^`]+)`/g)) if (!path.resolve(ROOT, path.dirname(f), p).startsWith(ROOT + path.sep)) bad.push(`${f}: ${p}`);
  }
  expect(bad).toEqual([]);
});
