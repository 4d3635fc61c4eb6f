/**
 * `fragcache deps`: prints a template's dependency tree.
 * @module
 */
import { dependencies, type DepNode } from '../deps';
import { loadConfig, type ConfigFlags } from './config';
import { colorsFor, type Colors } from './io';

/** The tree as text, with box-drawing branches. */
export function renderTree(root: DepNode, c: Colors): string {
  const lines = [c.bold(root.name)];
  const label = (n: DepNode): string => {
    const at = n.line !== undefined ? c.dim(` :${n.line}`) : '';
    switch (n.kind) {
      case 'cache': {
        const vary = n.vary?.length ? ` vary ${n.vary.join(', ')}` : '';
        return `${c.cyan('cache')} ${c.bold(n.name)} ${c.dim(`ttl ${n.ttl}${vary}`)}${at}`;
      }
      case 'dynamic':
        return `${c.yellow(n.name)} ${c.dim('(dynamic: not followed, not in the digest; declare it with deps=[…] or {# Template Dependency: … #})')}${at}`;
      case 'declared':
        return `${c.magenta('declared')} ${n.name} ${c.dim('(in the digest)')}`;
      case 'missing':
        return `${c.red(n.name)} ${c.red('(not found)')}${at}`;
      case 'cycle':
        return `${n.name} ${c.yellow('(cycle)')}${at}`;
      case 'repeat':
        return `${n.name} ${c.dim('(shown above)')}${at}`;
      default:
        return `${c.magenta(n.kind)} ${n.name}${at}`;
    }
  };
  const visit = (nodes: DepNode[], indent: string) => {
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      lines.push(`${indent}${last ? '└── ' : '├── '}${label(n)}`);
      visit(n.children, indent + (last ? '    ' : '│   '));
    });
  };
  visit(root.children, '');
  return lines.join('\n');
}

/** Runs `deps`. */
export async function deps(template: string, options: ConfigFlags & { json?: boolean }): Promise<void> {
  const config = loadConfig(options);
  const tree = dependencies(template, { views: config.views, syntax: config.syntax });
  process.stdout.write(options.json ? `${JSON.stringify(tree, null, 2)}\n` : `${renderTree(tree, colorsFor(process.stdout))}\n`);
}
