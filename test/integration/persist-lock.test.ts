// The persist lock (persist/write.ts acquireLock, an flock(2)): processes racing for a lock
// left by a dead persist — exactly one wins, every round — and what is planted at the lock's
// name is never followed.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { acquireLock, LOCK_NAME } from '../../persist/write.js';
import { REPO } from '../helpers/paths.js';

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
    expect(fs.readFileSync(path.join(dir, LOCK_NAME), 'utf8')).toBe(`${process.pid}\n`);
    expect(() => acquireLock(dir)).toThrow(`another mkma persist (pid ${process.pid}) is writing a layer to ${dir}`);
    release();
    release(); // twice: harmless
    acquireLock(dir)();
  });

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
