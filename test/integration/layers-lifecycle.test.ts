// `mkma layers disable|enable|rollback|remove|prune|pin|unpin|bless` on real images (the
// writer's), as users run them (bin/mkma.js --path), and what `mkma unpack` then gives; and
// the crash tests: each of disable, enable, rollback (of two layers) and remove killed with
// SIGKILL at every point where it touches the images directory (strace injects the signal at
// the entry of the N-th such system call: the lock, the fsyncs, the renames or unlink) must
// leave images that unpack to the tree before or the tree after (for the rollback also the
// rollback to the later point, its layers being disabled newest first), and the next command
// must work (the lock is free again).
import { beforeAll, describe, expect, jest, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { unpackImages } from '../../format/apply.js';
import { useTempDir } from '../helpers/files.js';
import { buildImages } from '../helpers/images.js';
import { MKMA, REPO } from '../helpers/paths.js';
import { listTree, treePath } from '../helpers/tree.js';

const tmp = useTempDir('layers-lifecycle');
jest.setTimeout(60_000);
const P = (s: string) => `persistence.${s}.cpio.zst`;

function mkma(args: string[], input?: string) {
  return spawnSync(process.execPath, [MKMA, 'layers', ...args], { encoding: 'utf8', timeout: 60_000, input });
}

let template = '';
beforeAll(async () => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  template = await buildImages(tmp(), [
    { name: P('1'), files: { 'etc/one': '1\n', 'etc/hostname': 'one\n' } },
    { name: P('2'), files: { 'etc/two': '2\n', 'etc/hostname': 'two\n' } },
    { name: P('3'), files: { 'etc/three': '3\n' } },
  ]);
}, 60_000);

/** A fresh copy of the template images. */
function images(): string {
  const dir = fs.mkdtempSync(path.join(tmp(), 'copy-'));
  for (const n of fs.readdirSync(template)) fs.copyFileSync(path.join(template, n), path.join(dir, n));
  return dir;
}

/** What `mkma unpack` (the TypeScript applier) makes of a directory: every path with a hash of its contents. */
async function tree(dir: string): Promise<string[]> {
  const into = fs.mkdtempSync(path.join(tmp(), 'tree-'));
  await unpackImages(dir, into);
  const out = listTree(into).map((rel) => {
    const p = treePath(into, rel);
    const st = fs.lstatSync(p);
    return st.isFile() ? `${rel} ${crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex').slice(0, 12)}` : rel;
  });
  fs.rmSync(into, { recursive: true, force: true });
  return out;
}

const layerFiles = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((n) => n.startsWith('persistence.'))
    .sort();

describe('the commands on real images', () => {
  test('disable takes a layer out of what unpacks, enable puts it back: the same tree as before', async () => {
    const dir = images();
    const before = await tree(dir);
    const d = mkma(['disable', '2', '--path', dir]);
    expect(d.stderr).toBe('');
    expect(d.status).toBe(0);
    expect(d.stdout).toBe('2: active → disabled\n');
    expect(layerFiles(dir)).toEqual([P('1'), P('2@disabled'), P('3')]);
    const t = await tree(dir);
    expect(t.some((l) => l.startsWith('etc/two'))).toBe(false);
    expect(t).toContain('etc/three ' + before.find((l) => l.startsWith('etc/three '))!.split(' ')[1]);
    // the hostname is layer 1's again
    expect(t).toContain(`etc/hostname ${crypto.createHash('sha256').update('one\n').digest('hex').slice(0, 12)}`);
    expect(mkma(['enable', P('2@disabled'), '--path', dir]).status).toBe(0);
    expect(await tree(dir)).toEqual(before);
    // and the lock file is gone
    expect(fs.readdirSync(dir).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  test('rollback: without NAME the newest layer, with NAME every one after it; mkma layers shows the states', () => {
    const dir = images();
    expect(mkma(['rollback', '--path', dir]).stdout).toBe('3: active → disabled\n');
    const r = mkma(['rollback', '1', '--path', dir, '--json']);
    expect(JSON.parse(r.stdout).changed).toEqual([{ id: '2', from: 'active', to: 'disabled' }]);
    expect(layerFiles(dir)).toEqual([P('1'), P('2@disabled'), P('3@disabled')]);
    const list = JSON.parse(mkma(['--path', dir, '--json']).stdout);
    expect(list.layers.map((l: { id: string; state: string }) => `${l.id} ${l.state}`)).toEqual(['1 active', '2 disabled', '3 disabled']);
  });

  test('pin, prune --keep, bless, and the text of mkma layers', () => {
    const dir = images();
    for (const id of ['1', '2', '3']) expect(mkma(['disable', id, '--path', dir]).status).toBe(0);
    expect(mkma(['pin', '1', '--path', dir]).stdout).toBe('1: disabled → disabled, pinned\n');
    const p = mkma(['prune', '--keep', '1', '--path', dir, '--json']);
    expect(p.status).toBe(0);
    // 3 kept (the newest disabled), 1 pinned: only 2 goes
    expect(JSON.parse(p.stdout).removed.map((x: { id: string }) => x.id)).toEqual(['2']);
    expect(layerFiles(dir)).toEqual([P('1@disabled,pinned'), P('3@disabled')]);
    fs.renameSync(path.join(dir, P('3@disabled')), path.join(dir, P('3@failed-3')));
    const text = mkma(['--path', dir]).stdout;
    expect(text).toMatch(/disabled, pinned/);
    expect(text).toMatch(/failed \(3 tries\)/);
    expect(mkma(['enable', '3', '--path', dir]).stderr).toMatch(/it is failed \(3 tries\): mkma layers bless accepts it/);
    expect(mkma(['bless', '3', '--tries', '2', '--path', dir]).stdout).toBe('3: failed (3 tries) → on trial (2 left)\n');
    expect(mkma(['--path', dir]).stdout).toMatch(/on trial \(2 tries left\)/);
    expect(mkma(['bless', '3', '--path', dir]).stdout).toBe('3: on trial (2 left) → active\n');
    expect(layerFiles(dir)).toEqual([P('1@disabled,pinned'), P('3')]);
  });

  test('prune: failed layers count with the disabled ones (the newest kept), a pinned one never', () => {
    const dir = images();
    fs.renameSync(path.join(dir, P('1')), path.join(dir, P('1@failed-3')));
    fs.renameSync(path.join(dir, P('2')), path.join(dir, P('2@disabled')));
    fs.renameSync(path.join(dir, P('3')), path.join(dir, P('3@failed-3,pinned')));
    let p = mkma(['prune', '--keep', '1', '--path', dir, '--json']);
    expect(p.status).toBe(0);
    // 1 (failed) and 2 (disabled) are beyond the rule's reach; 2 is the newest of them: kept
    expect(JSON.parse(p.stdout).removed.map((x: { id: string }) => x.id)).toEqual(['1']);
    expect(layerFiles(dir)).toEqual([P('2@disabled'), P('3@failed-3,pinned')]);
    p = mkma(['prune', '--keep', '0', '--path', dir]);
    expect(p.stdout).toMatch(/^removed 2 \(persistence\.2@disabled\.cpio\.zst, /);
    expect(layerFiles(dir)).toEqual([P('3@failed-3,pinned')]);
  });

  test('show: the entries against what lies below; with PATH a unified diff', () => {
    const dir = images();
    const r = mkma(['show', '2', '--path', dir]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('M /etc/hostname\nA /etc/two\n');
    const d = mkma(['show', P('2'), '/etc/hostname', '--path', dir]);
    expect(d.stdout).toBe('M /etc/hostname  (modified)\n--- below/etc/hostname\n+++ 2/etc/hostname\n@@ -1 +1 @@\n-one\n+two\n');
    // below a disabled layer 1: the base's hostname
    expect(mkma(['disable', '1', '--path', dir]).status).toBe(0);
    expect(mkma(['show', '2', '/etc/hostname', '--path', dir]).stdout).toMatch(/^-mkma\n\+two\n$/m);
    const none = mkma(['show', '2', '/etc/passwd', '--path', dir]);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/layer 2 changes nothing at \/etc\/passwd/);
  });

  test('remove: asks on a terminal, needs --yes without one; a name that is no layer is a usage error', () => {
    const dir = images();
    const no = mkma(['remove', '2', '--path', dir], '');
    expect(no.status).toBe(2);
    expect(no.stderr).toMatch(/no terminal to ask on: add --yes/);
    const missing = mkma(['disable', '9', '--path', dir]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/no layer "9" in .* \(layers: 1, 2, 3\)/);
    const y = mkma(['remove', '2', '--yes', '--path', dir]);
    expect(y.status).toBe(0);
    expect(layerFiles(dir)).toEqual([P('1'), P('3')]);
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * strace's options that trace exactly the system calls on the images directory, its lock and
 * the files of layers 2 and 3 under either name (a rollback renames both): the points where a
 * kill can fall between two steps.
 */
const onImages = (dir: string) =>
  [dir, path.join(dir, '.mkma-persist.lock'), ...['2', '2@disabled', '3', '3@disabled'].map((id) => path.join(dir, P(id)))].flatMap((p) => [
    '-P',
    p,
  ]);

/** Runs `mkma layers ARGS --path DIR` under strace, killed (SIGKILL) at the entry of a point (its k-th `syscall`); its exit status. */
function killedAt(dir: string, args: string[], point: Point): number | null {
  const inject = `inject=${point.syscall}:signal=KILL:when=${point.k}`;
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-o', '/dev/null', ...onImages(dir), '-e', inject, process.execPath, MKMA, 'layers', ...args, '--path', dir],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  return r.status;
}

/** A point: the k-th call of a system call by one process (strace counts `when=` per process). */
interface Point {
  syscall: string;
  k: number;
}

/** Every point of a whole run, in order. */
function pointsOf(dir: string, args: string[]): Point[] {
  const log = path.join(tmp(), `strace-${crypto.randomBytes(4).toString('hex')}`);
  const r = spawnSync('strace', ['-f', '-qq', '-o', log, ...onImages(dir), process.execPath, MKMA, 'layers', ...args, '--path', dir], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(r.status).toBe(0);
  const seen = new Map<string, number>();
  const points: Point[] = [];
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    const m = /^(\d+) +(\w+)\(/.exec(line);
    if (!m) continue;
    const key = `${m[1]} ${m[2]}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    // reads that change nothing (stat, directory listing) are no point of their own: a kill
    // there is the same as one at the next call
    if (!/^(statx|newfstatat|fstat|getdents64|lseek|read)$/.test(m[2])) points.push({ syscall: m[2], k: seen.get(key)! });
  }
  return points;
}

describe('SIGKILL at every point: the images unpack to the tree before or after, and the next command works', () => {
  // `between`: a command whose result is also a consistent state a kill may leave (rollback
  // disables newest first: a kill between two renames leaves a rollback to a later point)
  const cases: Array<{ what: string; prepare: (dir: string) => void; args: string[]; redo: string[]; between?: string[] }> = [
    { what: 'disable', prepare: () => {}, args: ['disable', '2'], redo: ['disable', '2'] },
    { what: 'rollback 1', prepare: () => {}, args: ['rollback', '1'], redo: ['rollback', '1'], between: ['rollback', '2'] },
    {
      what: 'enable',
      prepare: (dir) => fs.renameSync(path.join(dir, P('2')), path.join(dir, P('2@disabled'))),
      args: ['enable', '2'],
      redo: ['enable', '2'],
    },
    { what: 'remove', prepare: () => {}, args: ['remove', '2', '--yes'], redo: ['remove', '2', '--yes'] },
  ];
  for (const c of cases) {
    test(
      c.what,
      async () => {
        const probe = images();
        c.prepare(probe);
        const before = await tree(probe);
        const points = pointsOf(probe, c.args);
        const after = await tree(probe);
        expect(after).not.toEqual(before);
        let between: string[] | null = null;
        if (c.between) {
          const b = images();
          c.prepare(b);
          expect(mkma([...c.between, '--path', b]).status).toBe(0);
          between = await tree(b);
        }
        // every point the run has (at least 10: else the test would prove little)
        expect(points.length).toBeGreaterThanOrEqual(10);
        const outcomes = new Set<string>();
        for (const [i, point] of points.entries()) {
          const n = `${i + 1} (${point.syscall} #${point.k})`;
          const dir = images();
          c.prepare(dir);
          const status = killedAt(dir, c.args, point);
          expect(status).not.toBe(0);
          const t = await tree(dir);
          const same = (x: string[] | null) => x !== null && JSON.stringify(t) === JSON.stringify(x);
          const which = same(before) ? 'before' : same(after) ? 'after' : same(between) ? 'between' : 'MIXED';
          expect(`${c.what} killed at point ${n}: ${which}`).toBe(
            `${c.what} killed at point ${n}: ${which === 'MIXED' ? `before${between ? ', between' : ''} or after` : which}`,
          );
          outcomes.add(which);
          // the next run completes the change (or finds it done), the dead run's lock is no
          // obstacle (checked at every third point: a node start each)
          if (i % 3 === 0 || i === points.length - 1) {
            const redo = mkma([...c.redo, '--path', dir]);
            if (which === 'before' || c.what !== 'remove') expect(redo.status).toBe(0);
            expect(await tree(dir)).toEqual(after);
          }
          fs.rmSync(dir, { recursive: true, force: true });
        }
        // both outcomes were seen: the kills fell on both sides of the rename/unlink (and between
        // the renames of a rollback of two layers)
        expect([...outcomes].sort()).toEqual(between ? ['after', 'before', 'between'] : ['after', 'before']);
      },
      600_000,
    );
  }
});
