/**
 * Small formatters for the CLI's tables: durations, sizes, vary values, aligned columns.
 * @module
 */
import type { Colors } from './io';

/** Seconds as `45s`, `5m`, `1h30m`, `2d`; `null` (no expiry) as `never`. */
export function seconds(s: number | null | undefined): string {
  if (s === undefined) return '-';
  if (s === null) return 'never';
  if (s < 60) return `${Math.round(s)}s`;
  const parts: string[] = [];
  let rest = Math.round(s);
  for (const [unit, n] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (rest >= n) {
      parts.push(`${Math.floor(rest / n)}${unit}`);
      rest %= n;
    }
    if (parts.length === 2) break;
  }
  return parts.join('');
}

/** Milliseconds with a precision that suits their size. */
export function ms(n: number): string {
  return n < 1 ? `${n.toFixed(2)}ms` : n < 100 ? `${n.toFixed(1)}ms` : `${Math.round(n)}ms`;
}

/** A size in bytes or characters: `812 B`, `4.3 kB`, `1.2 MB`. */
export function size(n: number): string {
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

/** Vary values, short: strings quoted, long ones cut. */
export function vary(values: readonly unknown[], max = 48): string {
  const s = values
    .map((v) => {
      if (v instanceof Date) return v.toISOString();
      try {
        return JSON.stringify(v) ?? String(v);
      } catch {
        return String(v);
      }
    })
    .join(', ');
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** A column: header, and an optional colouring applied after padding (so widths ignore escape codes). */
export interface Column {
  header: string;
  align?: 'left' | 'right';
  color?: (cell: string, row: number) => string;
  /**
   * May be cut to fit the width: `middle` keeps both ends (keys: the prefix and the vary part), `end` the start.
   * Columns are cut in the order given by `shrinkOrder` (lowest first), each down to `min` characters (default 12).
   */
  shrink?: 'middle' | 'end';
  shrinkOrder?: number;
  min?: number;
}

/** Cuts a string to `width` characters with an ellipsis (in the middle or at the end). */
export function cut(text: string, width: number, where: 'middle' | 'end' = 'end'): string {
  if (text.length <= width) return text;
  if (width <= 1) return '…'.slice(0, width);
  if (where === 'end') return `${text.slice(0, width - 1)}…`;
  const head = Math.ceil((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}

/**
 * Aligned plain-text table. With `width`, shrinkable columns are cut so that each line fits in it (as far as
 * their minimum widths allow).
 */
export function table(columns: Column[], rows: string[][], c: Colors, width?: number): string {
  const widths = columns.map((col, i) => Math.max(col.header.length, ...rows.map((r) => (r[i] ?? '').length)));
  if (width !== undefined && width > 0) {
    let over = widths.reduce((a, b) => a + b, 0) + 2 * (columns.length - 1) - width;
    const order = columns.map((col, i) => ({ col, i })).filter((x) => x.col.shrink).sort((a, b) => (a.col.shrinkOrder ?? 0) - (b.col.shrinkOrder ?? 0));
    for (const { col, i } of order) {
      if (over <= 0) break;
      const min = Math.max(col.min ?? 12, col.header.length);
      const take = Math.min(over, Math.max(0, widths[i] - min));
      widths[i] -= take;
      over -= take;
    }
  }
  const fit = (text: string, i: number) => cut(text, widths[i], columns[i].shrink ?? 'end');
  const cell = (text: string, i: number) => (columns[i].align === 'right' ? fit(text, i).padStart(widths[i]) : fit(text, i).padEnd(widths[i]));
  const lines = [columns.map((col, i) => c.bold(cell(col.header, i))).join('  ').trimEnd()];
  rows.forEach((r, ri) => {
    lines.push(
      columns
        .map((col, i) => {
          const padded = cell(r[i] ?? '', i);
          return col.color ? col.color(padded, ri) : padded;
        })
        .join('  ')
        .trimEnd(),
    );
  });
  return lines.join('\n');
}
