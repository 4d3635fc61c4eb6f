#!/usr/bin/env node
/**
 * The `fragcache` command: preview templates, see every fragment, inspect and invalidate a store.
 * Exit codes: 0 success, 1 user error (bad template, missing file, unreachable store), 2 usage error.
 * @module
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { colorsFor, formatError } from './io';

/** The package version, read from package.json next to `dist/`. */
function version(): string {
  try {
    return (JSON.parse(readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** A whole number in [min, max] for a flag; a bad value is a usage error (exit 2). */
function whole(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    return n;
  };
}

/** Options every command that builds an engine or opens a store accepts. */
function common(cmd: Command, what: { views?: boolean; syntax?: boolean } = {}): Command {
  cmd.option('--store <url>', 'store URL: memory, redis://…, sqlite://… (overrides FRAGCACHE_STORE and the config)');
  cmd.option('--prefix <prefix>', 'key prefix (default "fc")');
  if (what.views) cmd.option('--views <dir>', 'templates folder (default "templates")');
  if (what.syntax) cmd.addOption(new Option('--syntax <syntax>', 'tag delimiters: angle (<% %>) or curly ({% %})').choices(['angle', 'curly']));
  cmd.option('--config <file>', 'config file (default: fragcache.config.js/.json or package.json "fragcache")');
  cmd.option('--debug', 'print stack traces of errors');
  return cmd;
}

/** Builds the program. Commands load their modules lazily, so `--help` stays fast. */
export function program(): Command {
  return build(new Command('fragcache'));
}

/** The options of the command that last ran its action (for the error handler: views, config, debug). */
const ran: { opts?: Record<string, unknown> } = {};

function build(p: Command): Command {
  p.description('Preview Nunjucks templates with their cache fragments, and inspect or invalidate a fragcache store.')
    .version(version(), '-V, --version', 'print the version')
    .showHelpAfterError('(add --help for usage)')
    .configureHelp({ showGlobalOptions: true })
    .hook('preAction', (_root, action) => {
      ran.opts = action.opts();
    })
    .addHelpText(
      'after',
      `
Configuration: fragcache.config.js / fragcache.config.json / package.json "fragcache"
  { "views": "templates", "store": "redis://localhost:6379", "prefix": "fc", "syntax": "angle" }
  FRAGCACHE_STORE overrides the config's store; flags override both.

Exit codes: 0 ok, 1 error (template, file, store), 2 usage.

Examples (in an empty folder, fragcache init first):
  $ fragcache init                           # example templates in views/, and a config pointing at them
  $ fragcache preview page.njk --data views/data/page.yaml --explain
  $ fragcache serve --port 3000
  $ fragcache deps page.njk
  $ FRAGCACHE_STORE=redis://localhost:6379 fragcache keys 'article-*'`,
    );

  p.command('init')
    .description('write example templates (a page with cached fragments, partials, a data file) to try the other commands on')
    .argument('[dir]', 'folder to write them to', 'views')
    .option('--force', 'write into a folder that is not empty (same-named files are replaced)')
    .addHelpText('after', '\nExamples:\n  $ fragcache init\n  $ fragcache init site/views')
    .action(async (dir: string, opts) => (await import('./init')).init(dir, opts));

  common(
    p
      .command('preview')
      .description('render a template to stdout; --explain prints every fragment (hit/miss, time, size, TTL, tags) to stderr')
      .argument('<template>', 'template path under the views, e.g. page.njk')
      .option('-d, --data <file>', 'template data: a .json, .yaml or .yml file')
      .option('-e, --explain', 'print a table of every fragment to stderr')
      .option('-r, --repeat <n>', 'render n times: the first run misses, the next ones hit (timings per run)', whole(1, 100_000))
      .option('--wide', 'show whole keys in the --explain table (by default it fits the terminal width)'),
    { views: true, syntax: true },
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache preview page.njk --data views/data/page.yaml --explain
  $ fragcache preview page.njk -d views/data/page.yaml --repeat 3 --explain > out.html
  $ fragcache preview article.njk -d views/data/article.yaml --views views --store redis://localhost:6379`,
    )
    .action(async (template: string, opts) => (await import('./preview')).preview(template, opts));

  common(
    p
      .command('serve')
      .description('preview server: renders any template at its path with data from a matching JSON/YAML file, live reload, ?fragcache=debug outlines fragments')
      .option('-p, --port <port>', 'port (0 picks a free one)', whole(0, 65535), 3000)
      .option('--host <host>', 'interface to listen on', '127.0.0.1')
      .option('--data-dir <dir>', 'folder of data files: <data-dir>/<template>.{json,yaml,yml} (default: <views>/data)'),
    { views: true, syntax: true },
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache serve                        # http://127.0.0.1:3000/page renders page.njk with views/data/page.yaml
  $ fragcache serve --port 8080 --views views --data-dir views/data
  open http://127.0.0.1:3000/page?fragcache=debug to outline each fragment with its name, hit/miss and age`,
    )
    .action(async (opts) => (await import('./serve')).serve(opts));

  common(
    p
      .command('deps')
      .description('the templates a page extends/includes/imports and the cache fragments in each, as a tree')
      .argument('<template>', 'template path under the views')
      .option('--json', 'print the tree as JSON'),
    { views: true, syntax: true },
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache deps page.njk
  $ fragcache deps article.njk --json | jq '.children[].name'`,
    )
    .action(async (template: string, opts) => (await import('./deps-command')).deps(template, opts));

  common(
    p
      .command('lint')
      .description('the leak guard, for CI: every cache block that reads data it does not vary on, or emits a per-request secret (exit 1 when any)')
      .argument('[templates...]', 'template paths under the views (default: every .njk/.html/.nunjucks file)')
      .option('--shared <names>', 'variables that are the same for every request, comma-separated (e.g. site,nav)')
      .option('--json', 'print { templates, problems, notes } as JSON'),
    { views: true, syntax: true },
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache lint
  $ fragcache lint layout.njk partials/sidebar.njk --shared site,nav
  $ fragcache lint --json | jq '.problems[].message'`,
    )
    .action(async (templates: string[], opts) => (await import('./lint-command')).lint(templates, opts));

  common(
    p
      .command('keys')
      .description('list the keys of the configured store under the prefix (fragments, values, tag versions)')
      .argument('[pattern]', 'glob (* and ?) matched against the fragment name or the whole key')
      .option('--wide', 'show whole keys (by default the table fits the terminal width)')
      .option('--json', 'print JSON'),
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache keys --store redis://localhost:6379
  $ FRAGCACHE_STORE=redis://localhost:6379 fragcache keys 'article-*'
  $ fragcache keys 'fc:tag:*' --json`,
    )
    .action(async (pattern: string | undefined, opts) => (await import('./store-commands')).keys(pattern, opts));

  common(
    p
      .command('inspect')
      .description('show the stored entries of a fragment: key, TTL left, size, tags, age, and whether each is valid now')
      .argument('<name>', 'fragment name')
      .argument('[vary...]', 'vary values (strings; with --json each is parsed as JSON: 1, true, "1")')
      .option('--json', 'parse vary values as JSON, and print JSON'),
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache inspect front-page
  $ fragcache inspect sidebar 7 --json          # vary on the number 7, not the string "7"
  $ fragcache inspect sidebar --store redis://localhost:6379`,
    )
    .action(async (name: string, vary: string[], opts) => (await import('./store-commands')).inspect(name, vary, opts));

  common(
    p
      .command('invalidate')
      .description('drop a fragment (every variant, or one with vary values) or everything tagged with a tag')
      .argument('[name]', 'fragment name')
      .argument('[vary...]', 'vary values of one variant (strings; with --json parsed as JSON)')
      // Optional value: `--tag --prefix x` then parses --prefix as an option (and fails: no tag), instead of
      // taking "--prefix" as a tag name. A tag that starts with "-" is written --tag=-x.
      .addOption(new Option('-t, --tag [tag...]', 'invalidate everything tagged with these tags instead (one or more; write a tag that starts with "-" as --tag=-x)'))
      .option('--json', 'parse vary values as JSON'),
  )
    .addHelpText(
      'after',
      `
Examples:
  $ fragcache invalidate front-page             # every variant, and every fragment containing one
  $ fragcache invalidate sidebar 7 --json       # the variant that varies on the number 7
  $ fragcache invalidate --tag article:1 articles
  $ fragcache invalidate --prefix shop --tag article:1   # options go before --tag or after its tags`,
    )
    .action(async (name: string | undefined, vary: string[], opts, cmd: Command) => (await import('./store-commands')).invalidate(name, vary, opts, cmd));

  common(
    p
      .command('stats')
      .description('what the configured store holds under the prefix: entries and bytes per fragment name, values, tags')
      .option('--wide', 'show whole names and URLs (by default the tables fit the terminal width)')
      .option('--json', 'print JSON'),
  )
    .addHelpText('after', '\nExamples:\n  $ fragcache stats --store redis://localhost:6379\n  $ fragcache stats --json')
    .action(async (opts) => (await import('./store-commands')).stats(opts));

  common(p.command('clear').description('delete every key under the prefix (and nothing else) from the configured store'))
    .addHelpText('after', '\nExamples:\n  $ fragcache clear --store redis://localhost:6379 --prefix fc')
    .action(async (opts) => (await import('./store-commands')).clear(opts));

  return p;
}

/** Runs the CLI; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  ran.opts = undefined;
  const p = program();
  p.exitOverride();
  for (const c of p.commands) c.exitOverride();
  try {
    await p.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    // The options as the command parsed them (`--views dir` and `--views=dir` alike).
    const opts: Record<string, unknown> = ran.opts ?? {};
    const debug = opts.debug === true || (!ran.opts && argv.includes('--debug'));
    // Views come from the same flags and config the command had, to quote the offending template line.
    let views: string[] = [];
    try {
      const { loadConfig } = await import('./config');
      views = loadConfig({ views: opts.views as string | undefined, config: opts.config as string | undefined }).views;
    } catch {
      /* a bad config: the error is printed without an excerpt */
    }
    process.stderr.write(`${formatError(err, { views, debug, colors: colorsFor(process.stderr) })}\n`);
    return (err as { exitCode?: number }).exitCode === 2 ? 2 : 1;
  }
}

if (require.main === module) {
  // `fragcache keys | head`: a reader that goes away is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  void main(process.argv.slice(2)).then((code) => {
    // A store client (Redis reconnects) must not keep the process alive; stdout is flushed first.
    process.stdout.write('', () => process.exit(code));
  });
}
