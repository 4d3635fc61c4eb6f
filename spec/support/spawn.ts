/**
 * Runs a command to its end and collects what it printed: the one spawn helper of the CLI, lint and pack specs
 * (each decides the command and the environment).
 */
import { spawn } from 'node:child_process';

/** What a finished process printed, and its exit code (null when killed by a signal). */
export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd args…` in `cwd` with `env`; rejects only when it cannot start. */
export function collect(cmd: string, args: readonly string[], options: { cwd: string; env: NodeJS.ProcessEnv }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
