// `mkma chroot` as users run it (bin/mkma.js), on real mounts (tmpfs, overlayfs, proc, sysfs,
// /dev) and a small image whose tree is busybox: what CMD changes becomes a layer that `mkma
// unpack` shows (deletions and replaced directories included); a failing or killed CMD saves
// nothing and gives its status; the session holds persist's lock; and after success, failure,
// a killed CMD, SIGTERM of mkma and SIGKILL of mkma (the next run cleans up and says so)
// nothing stays mounted and no process stays in the tree. Runs as root.
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { unpackImages } from '../../format/apply.js';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { processesRootedIn } from '../../persist/workarea.js';
import { put } from '../helpers/files.js';
import { shellTree } from '../helpers/images.js';
import { MKMA, REPO } from '../helpers/paths.js';
import { describeTree } from '../helpers/tree.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-chroot-test-'));
/** the sessions' work areas go here, so that what one left can be seen */
const WORKBASE = path.join(WORK, 'tmp');
jest.setTimeout(60_000);
const P = (s: string) => `persistence.${s}.cpio.zst`;
const layersIn = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((n) => n.startsWith('persistence.'))
    .sort();

function chroot(images: string, args: string[]) {
  return spawnSync(process.execPath, [MKMA, 'chroot', '--path', images, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TMPDIR: WORKBASE },
  });
}

/** Mount points under WORKBASE (/proc/self/mountinfo). */
const mountsLeft = () =>
  fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && m.startsWith(WORKBASE + '/'));

/** Nothing mounted, no work area, no process in one. */
function expectClean(): void {
  expect(mountsLeft()).toEqual([]);
  expect(fs.readdirSync(WORKBASE)).toEqual([]);
  expect(processesRootedIn(WORKBASE)).toEqual([]);
}

let template = '';
beforeAll(async () => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  fs.mkdirSync(WORKBASE);
  // a tree a shell runs in: busybox (static) and its applets
  const src = path.join(WORK, 'src');
  shellTree(src);
  put(src, 'etc/gone', 'deleted in the chroot\n');
  put(src, 'usr/share/doc/a/b', 'replaced with its directory\n');
  template = path.join(WORK, 'images');
  fs.mkdirSync(template);
  await packTree(src, path.join(template, 'base.cpio.zst'), { kind: 'base', level: 3 });
  // an active layer (in the chroot) and a disabled one (not in it), as the boot selects
  for (const [name, rel] of [
    [P('20261101T000000Z'), 'etc/one'],
    [P('20261102T000000Z@disabled'), 'etc/two'],
  ]) {
    const up = fs.mkdtempSync(path.join(WORK, 'upper-'));
    put(up, rel, `${rel}\n`);
    await packTree(up, path.join(template, name), { kind: 'layer', level: 3 });
  }
}, 120_000);

afterAll(() => {
  for (const m of mountsLeft().reverse()) spawnSync('umount', ['-l', m]);
  fs.rmSync(WORK, { recursive: true, force: true });
});

/** A fresh copy of the template images. */
function images(): string {
  const dir = fs.mkdtempSync(path.join(WORK, 'copy-'));
  for (const n of fs.readdirSync(template)) fs.copyFileSync(path.join(template, n), path.join(dir, n));
  return dir;
}

/** The tree `mkma unpack` (TypeScript apply) makes of the images, in a new directory. */
async function unpacked(dir: string): Promise<string> {
  const into = fs.mkdtempSync(path.join(WORK, 'tree-'));
  fs.rmdirSync(into);
  const r = await unpackImages(dir, into);
  expect(r.layers.filter((l) => !l.applied)).toEqual([]);
  return into;
}

const newLayers = (dir: string) => layersIn(dir).filter((n) => !layersIn(template).includes(n));

describe('mkma chroot --yes', () => {
  test('CMD exits 0: its change is a new layer (written as persist writes one) that mkma unpack shows', async () => {
    const dir = images();
    // the chroot holds the base and the active layer, not the disabled one
    const r = chroot(dir, ['--yes', '--', 'sh', '-c', 'test -e /etc/one && ! test -e /etc/two && echo x > /etc/x']);
    expect(r.stderr).toContain('mkma chroot: base + persistence.20261101T000000Z.cpio.zst');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^mkma: saved 1 change/);
    const [layer] = newLayers(dir);
    expect(newLayers(dir)).toHaveLength(1);
    const m = readManifest(path.join(dir, layer));
    expect(m.kind).toBe('layer');
    expect(m.message).toBe("mkma chroot: sh -c 'test -e /etc/one && ! test -e /etc/two && echo x > /etc/x'");
    expect(m.baseDataSha256).toBe(readManifest(path.join(dir, 'base.cpio.zst')).dataSha256);
    expect((fs.statSync(path.join(dir, layer)).mode & 0o777).toString(8)).toBe('600');
    const x = await unpacked(dir);
    expect(fs.readFileSync(path.join(x, 'etc/x'), 'utf8')).toBe('x\n');
    expect(fs.readFileSync(path.join(x, 'etc/one'), 'utf8')).toBe('etc/one\n');
    // the chroot helpers' traces (policy-rc.d, resolv.conf, mount points) are not in the layer
    expect(fs.existsSync(path.join(x, 'usr/sbin/policy-rc.d'))).toBe(false);
    expect(m.entries).toBe(2); // etc and etc/x
    fs.rmSync(x, { recursive: true, force: true });
    expectClean();
  });

  test('deletions and a replaced directory survive unpack, also of a file a layer added', async () => {
    const dir = images();
    const before = describeTree(await unpacked(dir));
    const r = chroot(dir, [
      '--yes',
      '-m',
      'clean up',
      '--json',
      '--',
      'sh',
      '-c',
      'rm /etc/gone /etc/one && rm -r /usr/share/doc/a && mkdir /usr/share/doc/a && echo n > /usr/share/doc/a/new && echo to-stderr',
    ]);
    expect(r.status).toBe(0);
    // --json: CMD's output goes to stderr, stdout is the result alone
    expect(r.stderr).toContain('to-stderr');
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ saved: true, status: 0, deleted: 2 });
    expect(readManifest(out.file).message).toBe('clean up');
    expect(readManifest(out.file).opaque).toEqual(['usr/share/doc/a']);
    const t = await unpacked(dir);
    for (const gone of ['etc/gone', 'etc/one', 'usr/share/doc/a/b']) expect(fs.existsSync(path.join(t, gone))).toBe(false);
    expect(fs.readdirSync(path.join(t, 'usr/share/doc/a'))).toEqual(['new']);
    // the rest as it was
    const after = describeTree(t);
    const same = (d: Record<string, string>) =>
      Object.fromEntries(Object.entries(d).filter(([k]) => !/^"?(etc|etc\/(gone|one)|usr\/share\/doc\/a(\/.*)?)"?$/.test(k)));
    expect(same(after)).toEqual(same(before));
    expectClean();
  });

  test('a failing CMD saves nothing and exits with its status', () => {
    const dir = images();
    const r = chroot(dir, ['--yes', '--', 'sh', '-c', 'echo y > /etc/y; exit 7']);
    expect(r.status).toBe(7);
    expect(r.stdout).toContain("sh -c 'echo y > /etc/y; exit 7' exited with status 7: its changes were discarded (nothing saved)");
    expect(newLayers(dir)).toEqual([]);
    expectClean();
  });

  test('a CMD killed by a signal: 128+n, nothing saved; a process left running is stopped', () => {
    const dir = images();
    let r = chroot(dir, ['--yes', '--', 'sh', '-c', 'echo k > /etc/k; kill -KILL $$']);
    expect(r.status).toBe(137);
    expect(newLayers(dir)).toEqual([]);
    expectClean();
    // a background process outlives its shell: stopped before the scan, the change is saved
    r = chroot(dir, ['--yes', '--', 'sh', '-c', 'sleep 1000 & echo bg > /etc/bg']);
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('stopped 1 process(es) still running in the chroot');
    expect(newLayers(dir)).toHaveLength(1);
    expectClean();
  });

  test('nothing changed: nothing written, and it says so', () => {
    const dir = images();
    const r = chroot(dir, ['--yes', '--', 'cat', '/etc/hostname']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('mkma\nmkma: nothing to save (no changes since the chroot was opened)');
    expect(newLayers(dir)).toEqual([]);
    expectClean();
  });

  test('usage: --json without --yes, no terminal without --yes, no base', () => {
    const dir = images();
    expect(chroot(dir, ['--json', '--', 'true']).status).toBe(2);
    const r = chroot(dir, ['--', 'true']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('no terminal to ask on: use --yes');
    const empty = fs.mkdtempSync(path.join(WORK, 'empty-'));
    expect(chroot(empty, ['--yes', '--', 'true']).status).toBe(2);
    expectClean();
  });
});

/** Starts `mkma chroot --yes -- sh -c 'echo ready; sleep 1000'`; resolves once CMD runs. */
function startSession(dir: string): Promise<{ child: ReturnType<typeof spawn>; stdout: () => string; stderr: () => string }> {
  const child = spawn(
    process.execPath,
    [MKMA, 'chroot', '--path', dir, '--yes', '--', 'sh', '-c', 'echo > /etc/s; echo ready; sleep 1000'],
    {
      env: { ...process.env, TMPDIR: WORKBASE },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready\n')) resolve({ child, stdout: () => out, stderr: () => err });
    });
    child.on('exit', (code) => reject(new Error(`mkma chroot ended early (${code}): ${err}`)));
  });
}

const exited = (child: ReturnType<typeof spawn>) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );

describe('interrupted, and the lock', () => {
  test('the session holds persist lock: a layers change or a persist meanwhile fails and says so', async () => {
    const dir = images();
    const s = await startSession(dir);
    const end = exited(s.child);
    try {
      const d = spawnSync(process.execPath, [MKMA, 'layers', 'disable', '20261101T000000Z', '--path', dir], { encoding: 'utf8' });
      expect(d.status).toBe(1);
      expect(d.stderr).toContain(
        `mkma chroot (pid ${s.child.pid}) holds the lock of ${dir}; wait for it to finish and run mkma layers disable again`,
      );
      expect(layersIn(dir)).toEqual(layersIn(template));
      const upper = fs.mkdtempSync(path.join(WORK, 'upper-'));
      put(upper, 'etc/x', 'x\n');
      const p = spawnSync(process.execPath, [MKMA, 'persist', '--yes', '--upper', upper, '--path', dir], { encoding: 'utf8' });
      expect(p.status).toBe(1);
      expect(p.stderr).toContain(
        `mkma: mkma chroot (pid ${s.child.pid}) holds the lock of ${dir}; wait for it to finish and run mkma persist again`,
      );
      expect(layersIn(dir)).toEqual(layersIn(template));
      const again = chroot(dir, ['--yes', '--', 'true']);
      expect(again.status).toBe(1);
      expect(again.stderr).toContain(`another mkma chroot (pid ${s.child.pid}) holds the lock of ${dir}`);
    } finally {
      s.child.kill('SIGTERM'); // also when a check failed: no session is left behind
      await end;
    }
    expectClean();
  }, 60_000);

  test('SIGTERM of mkma: CMD stopped, nothing mounted, nothing saved', async () => {
    const dir = images();
    const s = await startSession(dir);
    expect(mountsLeft().length).toBeGreaterThanOrEqual(6); // tmpfs, overlay, proc, sys, dev, run
    const end = exited(s.child);
    s.child.kill('SIGTERM');
    expect((await end).signal).toBe('SIGTERM');
    expect(newLayers(dir)).toEqual([]);
    expectClean();
    // the lock is free again
    expect(chroot(dir, ['--yes', '--', 'true']).status).toBe(127);
  }, 60_000);

  test('SIGKILL of mkma: what it left is removed by the next mkma chroot, which says so', async () => {
    const dir = images();
    const s = await startSession(dir);
    const end = exited(s.child);
    s.child.kill('SIGKILL');
    await end;
    // the kernel frees the lock; the mounts and the command stay until someone cleans up
    expect(mountsLeft().length).toBeGreaterThan(0);
    const [left] = fs.readdirSync(WORKBASE);
    const r = chroot(dir, ['--yes', '--', 'sh', '-c', 'echo after > /etc/after']);
    expect(r.status).toBe(0);
    expect(r.stderr).toContain(`removed ${path.join(WORKBASE, left)} (left by a killed mkma chroot)`);
    expect(newLayers(dir)).toHaveLength(1);
    expectClean();
  }, 60_000);
});
