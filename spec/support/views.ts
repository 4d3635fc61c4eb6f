/** Writes templates into a fresh temporary folder and returns its path (for tests that need includes). */
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export function views(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-views-'));
  writeTemplates(dir, files);
  return dir;
}

export function writeTemplates(dir: string, files: Record<string, string>): void {
  for (const [name, source] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), source);
  }
}

/** A filter that counts how often the body it sits in really ran. */
export function counter(): { filter: (x: unknown) => unknown; runs: () => number } {
  let n = 0;
  return {
    filter: (x: unknown) => {
      n++;
      return x;
    },
    runs: () => n,
  };
}
