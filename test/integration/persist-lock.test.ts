// The persist lock (persist/write.ts acquireLock, an flock(2)): processes racing for a lock
// left by a dead persist — exactly one wins, every round —, what is planted at the lock's name
// is never followed, and the command refused is told which command holds it (the lock file's
// text: `PID COMMAND`).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { acquireLock, LOCK_NAME, lockBusyMessage, PersistBusyError } from '../../persist/write.js';
import { MKMA, REPO } from '../helpers/paths.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-persist-lock-'));
afterAll(() => fs.rmSync(WORK, { recursive: true, force: true }));

beforeAll(() => {
  // dist/ for the contenders (plain node processes)
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
}, 120_000);

/** A pid that is certainly dead: a child that ran and was reaped. */
function deadPid(): number {
  const r = spawnSync('true');
  return r.pid!;
}

// One contender: says it is ready, waits at the barrier (a FIFO: opening it for reading blocks
// until the test opens it for writing, which releases every contender at once), takes the
// lock, holds it HOLD ms, prints the outcome.
const CONTENDER = `
import * as fs from 'node:fs';
import { acquireLock, PersistBusyError } from ${JSON.stringify(path.join(REPO, 'dist/persist/write.js'))};
const [dir, barrier, hold] = process.argv.slice(1);
process.stderr.write('ready\\n');
fs.closeSync(fs.openSync(barrier, 'r'));
try {
  const release = acquireLock(dir);
  console.log('won');
  await new Promise((r) => setTimeout(r, Number(hold)));
  release();
} catch (e) {
  console.log(e instanceof PersistBusyError ? 'busy' : 'error ' + e.message);
}
`;

function contend(dir: string, barrier: string, holdMs: number): { ready: Promise<void>; outcome: Promise<string> } {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CONTENDER, '--', dir, barrier, String(holdMs)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const ready = new Promise<void>((resolve) => child.stderr.once('data', () => resolve()));
  const outcome = new Promise<string>((resolve) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('close', () => resolve(out.trim()));
  });
  return { ready, outcome };
}

describe('the persist lock', () => {
  test("several processes racing for a dead persist's lock: exactly one wins, in every round", async () => {
    const CONTENDERS = 6;
    const ROUNDS = 5;
    const outcomes: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const dir = path.join(WORK, `race-${round}`);
      fs.mkdirSync(dir);
      // what a persist killed mid-write (or a power loss) leaves: its pid, no process
      fs.writeFileSync(path.join(dir, LOCK_NAME), `${deadPid()}\n`);
      const barrier = path.join(WORK, `barrier-${round}`);
      spawnSync('mkfifo', [barrier]);
      const contenders = Array.from({ length: CONTENDERS }, () => contend(dir, barrier, 1000));
      await Promise.all(contenders.map((c) => c.ready));
      await new Promise((r) => setTimeout(r, 100)); // each is in its open() of the FIFO
      fs.closeSync(fs.openSync(barrier, 'w')); // go
      const results = await Promise.all(contenders.map((c) => c.outcome));
      outcomes.push(results.sort().join(','));
      expect(results.filter((r) => r === 'won')).toHaveLength(1);
      expect(results.filter((r) => r === 'busy')).toHaveLength(CONTENDERS - 1);
      // released by the winner: gone, and free for the next persist
      expect(fs.existsSync(path.join(dir, LOCK_NAME))).toBe(false);
      acquireLock(dir)();
    }
    process.stderr.write(`[persist lock] ${ROUNDS} rounds of ${CONTENDERS} contenders: ${outcomes.join(' | ')}\n`);
  }, 120_000);

  test('a second acquire in the same process is refused while the first holds it; then free', () => {
    const dir = path.join(WORK, 'same-process');
    fs.mkdirSync(dir);
    const release = acquireLock(dir);
    expect(fs.readFileSync(path.join(dir, LOCK_NAME), 'utf8')).toBe(`${process.pid} mkma persist\n`);
    expect(() => acquireLock(dir)).toThrow(`another mkma persist (pid ${process.pid}) is writing a layer to ${dir}`);
    release();
    release(); // twice: harmless
    acquireLock(dir)();
  });

  test('the message names the command that holds the lock (the lock file says which)', () => {
    const dir = path.join(WORK, 'holder');
    fs.mkdirSync(dir);
    let release = acquireLock(dir, 'mkma chroot');
    expect(fs.readFileSync(path.join(dir, LOCK_NAME), 'utf8')).toBe(`${process.pid} mkma chroot\n`);
    expect(() => acquireLock(dir)).toThrow(
      new PersistBusyError(`mkma chroot (pid ${process.pid}) holds the lock of ${dir}; wait for it to finish and run mkma persist again`),
    );
    release();
    release = acquireLock(dir);
    expect(() => acquireLock(dir, 'mkma layers disable')).toThrow(
      `mkma persist (pid ${process.pid}) is writing a layer to ${dir}; wait for it to finish and run mkma layers disable again`,
    );
    release();
    // what an older mkma wrote (the pid alone), or text that is not mkma's: no command is named
    expect(lockBusyMessage(dir, '123\n', 'mkma persist')).toBe(
      `another mkma command (pid 123) holds the lock of ${dir}; wait for it to finish and run mkma persist again`,
    );
    expect(lockBusyMessage(dir, '123 rm -rf /\n', 'mkma persist')).toMatch(/^another mkma command holds the lock/);
  });

  test('mkma persist blocked by a running mkma chroot says so', async () => {
    const dir = path.join(WORK, 'by-chroot');
    const upper = path.join(WORK, 'by-chroot-upper');
    fs.mkdirSync(dir);
    fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(upper, 'etc/x'), 'x\n');
    // another process holds the lock as mkma chroot does (cli/chroot-cmd.ts) for its whole session
    const holder = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { acquireLock } from ${JSON.stringify(path.join(REPO, 'dist/persist/write.js'))};
         acquireLock(process.argv[1], 'mkma chroot'); console.log('locked'); setTimeout(() => {}, 60_000);`,
        '--',
        dir,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise((r) => holder.stdout.once('data', r));
      const r = spawnSync(process.execPath, [MKMA, 'persist', '--yes', '--upper', upper, '--path', dir], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr.trimEnd().split('\n').pop()).toBe(
        `mkma: mkma chroot (pid ${holder.pid}) holds the lock of ${dir}; wait for it to finish and run mkma persist again`,
      );
      expect(fs.readdirSync(dir).filter((n) => n.startsWith('persistence.'))).toEqual([]);
    } finally {
      holder.kill('SIGKILL');
    }
  }, 60_000);

  test("a symlink planted at the lock's name is refused, never followed", () => {
    const dir = path.join(WORK, 'planted');
    fs.mkdirSync(dir);
    const victim = path.join(WORK, 'victim');
    fs.writeFileSync(victim, 'precious\n');
    fs.symlinkSync(victim, path.join(dir, LOCK_NAME));
    expect(() => acquireLock(dir)).toThrow(
      `${path.join(dir, LOCK_NAME)} is a symbolic link, not mkma's lock file: remove it and run mkma persist again`,
    );
    expect(fs.readFileSync(victim, 'utf8')).toBe('precious\n');
  });
});
