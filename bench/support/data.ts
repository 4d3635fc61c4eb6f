/**
 * Deterministic data and filters for the benchmark templates (`bench/templates`): a 200-row product table,
 * a 20-item list, the `money` filter.
 * @module
 */
import type nunjucks from 'nunjucks';

/** One row of the product table. */
export interface Row {
  id: number;
  name: string;
  description: string;
  price: number;
  category: string;
  status: string;
  note: string;
  onSale: boolean;
}

const WORDS = ['copper', 'kettle', 'linen', 'lamp', 'walnut', 'desk', 'wool', 'blanket', 'glass', 'vase', 'oak', 'shelf'];
const CATEGORIES = ['Kitchen', 'LIVING', 'Bedroom', 'Office', 'Garden'];
const STATUSES = ['in stock', 'LOW STOCK', 'back-order', 'discontinued'];

/** A tiny seeded PRNG (mulberry32), so every run renders the same page. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` rows; notes contain `<`, `&` and quotes so that escaping does real work. */
export function rows(n: number, seed = 42): Row[] {
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  return Array.from({ length: n }, (_, i) => ({
    id: i + 1,
    name: `${pick(WORDS)} ${pick(WORDS)} ${i + 1}`,
    description: `A ${pick(WORDS)} ${pick(WORDS)} made from ${pick(WORDS)} and ${pick(WORDS)}, finished by hand in small batches.`,
    price: Math.round(rnd() * 250_000) / 100,
    category: pick(CATEGORIES),
    status: pick(STATUSES),
    note: `Ships in ${1 + Math.floor(rnd() * 9)} days <fragile> & "boxed"`,
    onSale: rnd() < 0.3,
  }));
}

/** The page context: site (for the layout and nav) and the table rows. */
export function pageContext(n = 200): Record<string, unknown> {
  return {
    site: {
      name: 'Fragcache Store',
      year: 2026,
      nav: ['home', 'products', 'about us', 'contact'].map((label, i) => ({ label, href: `/${label.replace(/ /g, '-')}`, current: i === 1 })),
    },
    rows: rows(n),
  };
}

/** `money`: two decimals and thousands separators (toFixed + regex, as a typical app filter). */
export function money(value: unknown): string {
  return '$' + Number(value).toFixed(2).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** Adds the benchmark filters to an Environment. */
export function addFilters(env: nunjucks.Environment): void {
  env.addFilter('money', money);
}
