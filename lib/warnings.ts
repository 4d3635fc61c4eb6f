/**
 * Warnings: what fragcache finds wrong with templates without failing a render (a dependency it cannot
 * follow, a fragment that reads data it does not vary on, a sampled hit that differs from a fresh render).
 * Engines emit them as `warning` events; with no listener they go to `process.emitWarning`.
 * @module
 */

/** One warning. `message` says it all; the other fields are for tools. */
export interface FragcacheWarning {
  /**
   * `dynamic-dependency`: an include/import whose name is an expression, so the digest cannot cover it;
   * `leak`: a cache body reads a variable no vary expression mentions; `secret`: a cache body emits what looks
   * like a per-request secret; `verify`: a sampled hit differs from a fresh render of the same fragment;
   * `syntax`: a template has Nunjucks' own `{% %}` tags under the angle syntax, where they are output as text;
   * `not-stored`: a fragment is rendered every time and never stored (the message says why).
   */
  kind: 'dynamic-dependency' | 'leak' | 'secret' | 'verify' | 'syntax' | 'not-stored';
  message: string;
  /** Fragment name. */
  fragment?: string;
  /** Template path (as shown) and 1-based position of the cache tag. */
  template?: string;
  line?: number;
  column?: number;
  /** For `leak`: the path read (`user.name`) and the variable not varied on (`user`). */
  variable?: string;
  path?: string;
  /** For `verify`: the key, and the first differing characters of the stored and the fresh output. */
  key?: string;
  stored?: string;
  fresh?: string;
}

/** Default reporter: Node's warning channel (printed once per message by the CLI, shown by `node`). */
export function emitProcessWarning(w: FragcacheWarning): void {
  process.emitWarning(w.message, { type: 'FragcacheWarning', code: `FRAGCACHE_${w.kind.toUpperCase().replace(/-/g, '_')}` });
}
