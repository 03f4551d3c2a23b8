// The ground floor: the process runner, the cleanup registry, exit codes carried by errors.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BootFailedError, EnvironmentError, EXIT, exitCodeOf, MkmaError, UsageError } from '../../lib/errors.js';
import { CommandError, CommandNotFoundError, run, runSync } from '../../lib/run.js';
import { ConfigError } from '../../config/load.js';
import { MissingToolsError } from '../../lib/hosttools.js';

describe('errors carry their exit codes', () => {
  test.each([
    [new MkmaError('x'), EXIT.failed],
    [new UsageError('x'), EXIT.usage],
    [new ConfigError('x', { file: null, key: null, line: null }), EXIT.usage],
    [new EnvironmentError('x'), EXIT.environment],
    [new MissingToolsError([{ command: 'zstd', pkg: 'zstd', why: 'w' }]), EXIT.environment],
    [new CommandNotFoundError('zstd'), EXIT.environment],
    [new BootFailedError('x'), EXIT.bootFailed],
    [new Error('plain'), EXIT.failed],
  ])('%p', (e, code) => {
    expect(exitCodeOf(e)).toBe(code);
  });
});

describe('runSync / run', () => {
  test('a failure names the command, its status and the last lines of stderr', () => {
    let err: unknown;
    try {
      runSync('sh', ['-c', 'for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3']);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CommandError);
    const msg = (err as Error).message;
    expect(msg).toContain("sh -c 'for i in");
    expect(msg).toContain('(exit 3)');
    expect(msg).toContain('line7');
    expect(msg).not.toContain('line2');
    expect((err as CommandError).status).toBe(3);
  });

  test('output bytes are kept exactly (names are not always UTF-8)', async () => {
    const bytes = Buffer.from([0xff, 0x41, 0x00, 0x0a]);
    expect(runSync('cat', [], { input: bytes }).stdoutBytes.equals(bytes)).toBe(true);
    expect((await run('cat', [], { input: bytes })).stdoutBytes.equals(bytes)).toBe(true);
  });

  test('allowFailure returns the result; a missing program names its package', async () => {
    const r = runSync('false', [], { allowFailure: true });
    expect(r.ok).toBe(false);
    expect(r.status).toBe(1);
    expect(() => runSync('mkma-no-such-program', [])).toThrow(CommandNotFoundError);
    expect(() => runSync('/nonexistent/mkfs.erofs', [])).toThrow(/apt-get install erofs-utils/);
    await expect(run('mkma-no-such-program', [])).rejects.toBeInstanceOf(CommandNotFoundError);
  });

  test('a timeout kills the command and says so', async () => {
    await expect(run('sleep', ['10'], { timeoutMs: 200 })).rejects.toThrow(/timed out/);
    expect(() => runSync('sleep', ['10'], { timeoutMs: 200 })).toThrow(/timed out/);
  });
});

describe('cleanup registry', () => {
  // A child node process: registered cleanups run when it is killed by a signal, newest
  // first, and it still dies of the signal.
  const script = (body: string) => `
    import { onCleanup, interceptSignals } from '${path.resolve('dist/lib/cleanup.js')}';
    import * as fs from 'node:fs';
    const log = process.argv[2];
    ${body}
    fs.appendFileSync(log, 'ready\\n');
    setTimeout(() => {}, 10000);
  `;
  const runChild = (body: string) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-cleanup-'));
    const log = path.join(dir, 'log');
    const file = path.join(dir, 'child.mjs');
    fs.writeFileSync(file, script(body));
    fs.writeFileSync(log, '');
    const r = spawnSync('sh', ['-c', `node "$1" "$2" & pid=$!; while ! grep -q ready "$2"; do sleep 0.05; done; kill -TERM $pid; wait $pid; echo "status $?" >>"$2"`, 'sh', file, log]);
    expect(r.status).toBe(0);
    return fs.readFileSync(log, 'utf8').trim().split('\n');
  };

  test('SIGTERM runs the cleanups newest first, then ends the process with the signal', () => {
    expect(fs.existsSync('dist/lib/cleanup.js')).toBe(true); // compiled by npm test's tsc
    const lines = runChild(`
      onCleanup('first', () => fs.appendFileSync(log, 'first\\n'));
      const release = onCleanup('released', () => fs.appendFileSync(log, 'released\\n'));
      onCleanup('second', () => fs.appendFileSync(log, 'second\\n'));
      release();
    `);
    expect(lines).toEqual(['ready', 'second', 'first', 'status 143']);
  });

  test('an interceptor that handles the signal keeps the process running', () => {
    expect(fs.existsSync('dist/lib/cleanup.js')).toBe(true);
    const lines = runChild(`
      onCleanup('c', () => fs.appendFileSync(log, 'cleanup\\n'));
      interceptSignals((sig) => { fs.appendFileSync(log, 'intercepted ' + sig + '\\n'); setTimeout(() => process.exit(7), 10); return true; });
    `);
    expect(lines).toEqual(['ready', 'intercepted SIGTERM', 'cleanup', 'status 7']);
  });
});
