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

  test('onLine gets every line of both streams as it comes, the last one without a newline too', async () => {
    const lines: string[] = [];
    // é (c3 a9) split between two writes is still one character
    const r = await run('sh', ['-c', 'printf "a\\nb\\n"; printf "c\\n" >&2; printf "\\303"; sleep 0.1; printf "\\251x"'], {
      onLine: (l) => lines.push(l),
    });
    expect(lines.sort()).toEqual(['a', 'b', 'c', '\u00e9x']);
    expect(r.stdout).toBe('a\nb\n\u00e9x');
  });

  test('processGroup: a timeout stops what the command started too', async () => {
    const r = await run('sh', ['-c', 'sleep 30 & echo $!; wait'], { processGroup: true, timeoutMs: 300, allowFailure: true });
    expect(r.timedOut).toBe(true);
    const pid = Number(r.stdout.trim());
    expect(pid).toBeGreaterThan(0);
    expect(alive(pid)).toBe(false);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // a zombie (not yet reaped by its parent) is gone for our purpose
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]);
}

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
    const r = spawnSync('sh', [
      '-c',
      `node "$1" "$2" & pid=$!; while ! grep -q ready "$2"; do sleep 0.05; done; kill -TERM $pid; wait $pid; echo "status $?" >>"$2"`,
      'sh',
      file,
      log,
    ]);
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

  test('a tracked child spawned detached is stopped with its whole process group', () => {
    expect(fs.existsSync('dist/lib/run.js')).toBe(true);
    const lines = runChild(`
      const { spawnTracked } = await import('${path.resolve('dist/lib/run.js')}');
      const pidFile = log + '.pid';
      spawnTracked('sh', ['-c', 'sleep 60 & echo $! > "$0"; wait', pidFile], { detached: true, stdio: 'ignore' });
      while (!fs.existsSync(pidFile) || !fs.readFileSync(pidFile, 'utf8').trim()) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      fs.appendFileSync(log, 'grandchild ' + fs.readFileSync(pidFile, 'utf8'));
    `);
    expect(lines[0]).toMatch(/^grandchild \d+$/);
    expect(lines.slice(1)).toEqual(['ready', 'status 143']);
    expect(alive(Number(lines[0].split(' ')[1]))).toBe(false);
  });
});
