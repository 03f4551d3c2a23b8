// Persisting twice in one boot, on a real overlay (as test/integration/persist.test.ts): the
// second `mkma persist` saves only what changed since the first, turns what the first saved
// and the owner removed since into deletions, and base + both layers applied with the real
// unpack give exactly the merged view. Runs as root (mounts).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { unpackImages } from '../../format/apply.js';
import { packTree } from '../../format/pack.js';
import { layerId } from '../../format/names.js';
import { extractImage, readManifest } from '../../format/reader.js';
import { readSavedRecord, savedRecordPath } from '../../persist/saved.js';
import { describeTree, listTree } from '../helpers/tree.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-persist-twice-'));
const T = path.join(WORK, 't');
const mounts: string[] = [];
const records: string[] = [];

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
function put(root: string, rel: string, data: string, mode = 0o644): void {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, data);
  fs.chmodSync(p, mode);
}
const layersIn = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((n) => /^persistence\..*\.cpio\.zst$/.test(n))
    .sort();

const persist = (args: string[]) => mkma(['persist', ...args]);
function mkma(args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [path.join(REPO, 'bin/mkma.js'), ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 120_000,
  });
}

/** An overlay over base.cpio.zst unpacked, in its own directory of T. */
async function overlay(name: string, base: (src: string) => void) {
  const d = path.join(T, name);
  const o = { src: `${d}/src`, images: `${d}/images`, L: `${d}/lower`, U: `${d}/upper`, W: `${d}/work`, M: `${d}/merged` };
  base(o.src);
  fs.mkdirSync(o.images, { recursive: true });
  await packTree(o.src, path.join(o.images, 'base.cpio.zst'), { kind: 'base', level: 3 });
  await unpackImages(o.images, o.L);
  for (const x of [o.U, o.W, o.M]) fs.mkdirSync(x);
  run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${o.L},upperdir=${o.U},workdir=${o.W},redirect_dir=off,metacopy=off`, o.M]);
  mounts.push(o.M);
  records.push(savedRecordPath(o.U));
  const args = ['--yes', '-q', '--upper', o.U, '--lower', o.L, '--path', o.images];
  return { ...o, m: (rel: string) => path.join(o.M, rel), args };
}

beforeAll(() => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  fs.mkdirSync(T);
  run('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', T]);
}, 120_000);

afterAll(() => {
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  spawnSync('umount', ['-l', T]);
  for (const r of records) fs.rmSync(r, { force: true });
  fs.rmSync(WORK, { recursive: true, force: true });
});

describe('two saves in one boot', () => {
  let o: Awaited<ReturnType<typeof overlay>>;
  let first: string;
  let second: string;

  beforeAll(async () => {
    o = await overlay('twice', (src) => {
      put(src, 'etc/hostname', 'base\n');
      put(src, 'etc/lower-mod', 'lower\n');
      put(src, 'etc/lower-del', 'lower\n');
      put(src, 'etc/lower-chmod', 'lower\n');
      put(src, 'etc/lower-del-then-back', 'lower\n');
      put(src, 'etc/lower-mod-then-del', 'lower\n');
      put(src, 'opt/lowerdir/x', 'x\n');
      put(src, 'opt/lowerdir/y', 'y\n');
    });
    const { m } = o;
    // ---- round A
    fs.writeFileSync(m('etc/a-keep'), 'A\n'); // saved, unchanged since
    fs.writeFileSync(m('etc/a-mod'), 'A\n'); // saved, modified since
    fs.writeFileSync(m('etc/a-chmod'), 'A\n'); // saved, chmod since
    fs.writeFileSync(m('etc/a-del'), 'A\n'); // saved, deleted since (no whiteout: nothing below)
    fs.writeFileSync(m('etc/a-to-dir'), 'A\n'); // saved, replaced by a directory since
    fs.mkdirSync(m('srv/a-dir/sub'), { recursive: true }); // saved directory, removed + recreated empty
    fs.writeFileSync(m('srv/a-dir/sub/f'), 'A\n');
    fs.mkdirSync(m('srv/a-tree/in'), { recursive: true }); // saved tree, child deleted since
    fs.writeFileSync(m('srv/a-tree/in/gone'), 'A\n');
    fs.writeFileSync(m('srv/a-tree/in/stays'), 'A\n');
    fs.mkdirSync(m('srv/a-dir-to-file')); // saved directory, replaced by a file since
    fs.writeFileSync(m('srv/a-dir-to-file/f'), 'A\n');
    fs.mkdirSync(m('srv/a-gone/deep'), { recursive: true }); // saved subtree removed whole
    fs.writeFileSync(m('srv/a-gone/deep/f'), 'A\n');
    fs.writeFileSync(m('etc/lower-mod'), 'A\n');
    fs.rmSync(m('etc/lower-del'));
    fs.chmodSync(m('etc/lower-chmod'), 0o600);
    fs.rmSync(m('etc/lower-del-then-back'));
    fs.writeFileSync(m('etc/lower-mod-then-del'), 'A\n');
    fs.rmSync(m('opt/lowerdir'), { recursive: true }); // opaque directory
    fs.mkdirSync(m('opt/lowerdir'));
    fs.writeFileSync(m('opt/lowerdir/new'), 'A\n');
    const r1 = persist([...o.args, '--message', 'A']);
    expect(r1.stderr).toBe('');
    expect(r1.status).toBe(0);
    first = layersIn(o.images)[0];

    // ---- round B
    fs.writeFileSync(m('etc/a-mod'), 'B\n');
    fs.chmodSync(m('etc/a-chmod'), 0o640);
    fs.rmSync(m('etc/a-del'));
    fs.rmSync(m('etc/a-to-dir'));
    fs.mkdirSync(m('etc/a-to-dir'));
    fs.writeFileSync(m('etc/a-to-dir/inside'), 'B\n');
    fs.rmSync(m('srv/a-dir'), { recursive: true });
    fs.mkdirSync(m('srv/a-dir'));
    fs.rmSync(m('srv/a-tree/in/gone'));
    fs.rmSync(m('srv/a-dir-to-file'), { recursive: true });
    fs.writeFileSync(m('srv/a-dir-to-file'), 'B\n');
    fs.rmSync(m('srv/a-gone'), { recursive: true });
    fs.writeFileSync(m('etc/lower-del-then-back'), 'B\n');
    fs.rmSync(m('etc/lower-mod-then-del'));
    fs.writeFileSync(m('opt/lowerdir/b'), 'B\n');
    fs.writeFileSync(m('etc/b-new'), 'B\n');
    const r2 = persist([...o.args, '--message', 'B']);
    expect(r2.stderr).toBe('');
    expect(r2.status).toBe(0);
    second = layersIn(o.images).find((n) => n !== first)!;
  }, 120_000);

  test('the second layer holds only what changed since the first, and the deletions it needs', async () => {
    expect(layersIn(o.images)).toEqual([first, second].sort());
    const mf = readManifest(path.join(o.images, second));
    expect(mf.message).toBe('B');
    expect(mf.deleted).toEqual(['etc/a-del', 'etc/lower-mod-then-del', 'srv/a-gone', 'srv/a-tree/in/gone']);
    expect(mf.opaque).toEqual(['etc/a-to-dir', 'srv/a-dir']);
    const x = fs.mkdtempSync(path.join(T, 'x-'));
    await extractImage(path.join(o.images, second), x);
    expect(listTree(x).filter((p) => p !== '.')).toEqual([
      'etc',
      'etc/a-chmod',
      'etc/a-mod',
      'etc/a-to-dir',
      'etc/a-to-dir/inside',
      'etc/b-new',
      'etc/lower-del-then-back',
      'opt',
      'opt/lowerdir',
      'opt/lowerdir/b',
      'srv',
      'srv/a-dir',
      'srv/a-dir-to-file',
      'srv/a-tree', // the parents of a deletion (the writer repeats them)
      'srv/a-tree/in',
    ]);
  });

  test('base + both layers == the merged view', async () => {
    const fresh = path.join(T, 'twice-fresh');
    const report = await unpackImages(o.images, fresh);
    expect(report.layers.map((l) => l.applied)).toEqual([true, true]);
    expect(describeTree(fresh, { skipRoot: true })).toEqual(describeTree(o.M, { skipRoot: true }));
    // spot checks: a wrong comparison cannot pass by accident
    expect(fs.existsSync(path.join(fresh, 'etc/a-del'))).toBe(false);
    expect(fs.existsSync(path.join(fresh, 'srv/a-gone'))).toBe(false);
    expect(fs.readdirSync(path.join(fresh, 'srv/a-dir'))).toEqual([]);
    expect(fs.readFileSync(path.join(fresh, 'etc/a-mod'), 'utf8')).toBe('B\n');
    expect(fs.statSync(path.join(fresh, 'etc/a-chmod')).mode & 0o777).toBe(0o640);
  });

  test('mkma unpack (mkma-unpack where it builds) agrees', () => {
    // unpack-cmd picks mkma-unpack where it builds: the CLI path is what users run
    const fresh = path.join(T, 'twice-cli');
    const r = spawnSync(process.execPath, [path.join(REPO, 'bin/mkma.js'), 'unpack', '--images', o.images, '--into', fresh], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(describeTree(fresh, { skipRoot: true })).toEqual(describeTree(o.M, { skipRoot: true }));
  });

  test('a third persist with nothing new writes nothing and says since which save', () => {
    const r = persist(o.args);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`mkma: nothing to save (no changes since the last save (${second}))\n`);
    expect(layersIn(o.images)).toHaveLength(2);
    const d = persist(['--dry-run', '--json', '--upper', o.U, '--lower', o.L]);
    const out = JSON.parse(d.stdout) as { entries: Array<{ kind: string }> };
    expect(out.entries.filter((e) => e.kind !== 'container')).toEqual([]);
  });

  test('a change to a twice-saved file is offered again', () => {
    fs.appendFileSync(o.m('etc/a-keep'), 'C\n');
    const d = persist(['--dry-run', '--json', '--upper', o.U, '--lower', o.L]);
    const out = JSON.parse(d.stdout) as { entries: Array<{ path: string; kind: string }> };
    expect(out.entries.filter((e) => e.kind !== 'container').map((e) => [e.path, e.kind])).toEqual([['/etc/a-keep', 'modified']]);
  });
});

describe('the record follows the layers it names', () => {
  test('all of them gone: everything since boot is saved again; some gone: refused', async () => {
    const o = await overlay('gone', (src) => put(src, 'etc/hostname', 'base\n'));
    fs.writeFileSync(o.m('etc/one'), '1\n');
    expect(persist(o.args).status).toBe(0);
    const [l1] = layersIn(o.images);
    expect(readSavedRecord(o.U)?.layers).toEqual([l1]);
    fs.rmSync(path.join(o.images, l1));
    fs.writeFileSync(o.m('etc/two'), '2\n');
    const r = persist(o.args);
    expect(r.status).toBe(0);
    const [l2] = layersIn(o.images);
    const x = fs.mkdtempSync(path.join(T, 'g-'));
    await extractImage(path.join(o.images, l2), x);
    expect(fs.readdirSync(path.join(x, 'etc')).sort()).toEqual(['one', 'two']);
    expect(readSavedRecord(o.U)?.layers).toEqual([l2]);

    // two layers recorded, one of them removed: a third save cannot be made right
    fs.writeFileSync(o.m('etc/three'), '3\n');
    await new Promise((res) => setTimeout(res, 1100)); // another second: another layer name
    expect(persist(o.args).status).toBe(0);
    fs.rmSync(path.join(o.images, l2));
    fs.writeFileSync(o.m('etc/four'), '4\n');
    const bad = persist(o.args);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/saved earlier in this boot are no longer applied at boot .*persistence\./);
    expect(layersIn(o.images)).toHaveLength(1);
  }, 60_000);

  test('a state change between saves keeps it (layers are matched by id); disabled counts as gone', async () => {
    const o = await overlay('bless', (src) => put(src, 'etc/hostname', 'base\n'));
    const layers = (args: string[]) => mkma(['layers', ...args, '--path', o.images]);
    fs.writeFileSync(o.m('etc/one'), '1\n');
    expect(persist(o.args).status).toBe(0);
    const [l1] = layersIn(o.images);
    const id1 = layerId(l1)!;
    expect(l1).toBe(`persistence.${id1}@trial-3-0.cpio.zst`); // a new layer is on trial
    expect(layers(['bless', id1]).status).toBe(0);
    expect(layersIn(o.images)).toEqual([`persistence.${id1}.cpio.zst`]);

    // blessed (renamed active) since: the second save still holds only what changed since
    fs.writeFileSync(o.m('etc/two'), '2\n');
    const r2 = persist(o.args);
    expect(r2.stderr).toBe('');
    expect(r2.status).toBe(0);
    const l2 = layersIn(o.images).find((n) => layerId(n) !== id1)!;
    const x = fs.mkdtempSync(path.join(T, 'b-'));
    await extractImage(path.join(o.images, l2), x);
    expect(fs.readdirSync(path.join(x, 'etc'))).toEqual(['two']);
    // the record names the layers as they are now called
    expect(readSavedRecord(o.U)?.layers).toEqual([`persistence.${id1}.cpio.zst`, l2]);
    const again = persist(o.args);
    expect(again.stdout).toBe(`mkma: nothing to save (no changes since the last save (${l2}))\n`);

    // pinned, disabled then enabled again: still the same layers, still applied
    expect(layers(['pin', id1]).status).toBe(0);
    expect(layers(['disable', layerId(l2)!]).status).toBe(0);
    expect(layers(['enable', layerId(l2)!]).status).toBe(0);
    fs.writeFileSync(o.m('etc/three'), '3\n');
    await new Promise((res) => setTimeout(res, 1100)); // another second: a third name
    const r3 = persist(o.args);
    expect(r3.stderr).toBe('');
    expect(r3.status).toBe(0);
    expect(layersIn(o.images)).toHaveLength(3);

    // one of them disabled: the next boot does not apply what it held, so a save is refused
    expect(layers(['disable', layerId(l2)!]).status).toBe(0);
    fs.writeFileSync(o.m('etc/four'), '4\n');
    const bad = persist(o.args);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/no longer applied at boot .*\(removed, disabled or failed\): persistence\.\S+ \(while/);
    expect(bad.stderr.slice(0, bad.stderr.indexOf('(while'))).toContain(`persistence.${layerId(l2)}`);
    expect(layersIn(o.images)).toHaveLength(3);

    // all of them disabled (a rollback): the record is dropped, everything since boot is saved
    for (const n of layersIn(o.images)) if (!n.includes('@disabled')) expect(layers(['disable', layerId(n)!]).status).toBe(0);
    await new Promise((res) => setTimeout(res, 1100));
    const r4 = persist(o.args);
    expect(r4.stderr).toBe('');
    expect(r4.status).toBe(0);
    const l4 = layersIn(o.images).find((n) => n.includes('@trial'))!;
    const y = fs.mkdtempSync(path.join(T, 'b-'));
    await extractImage(path.join(o.images, l4), y);
    expect(fs.readdirSync(path.join(y, 'etc')).sort()).toEqual(['four', 'one', 'three', 'two']);
    expect(readSavedRecord(o.U)?.layers).toEqual([l4]);
  }, 90_000);

  test('layers compacted between saves still count: a file saved, then deleted, stays deleted', async () => {
    const o = await overlay('compacted', (src) => put(src, 'etc/hostname', 'base\n'));
    const layers = (args: string[]) => mkma(['layers', ...args, '--path', o.images]);
    const blessAll = () => {
      for (const n of layersIn(o.images)) if (n.includes('@trial')) expect(layers(['bless', layerId(n)!]).status).toBe(0);
    };
    fs.writeFileSync(o.m('etc/one'), '1\n');
    expect(persist(o.args).status).toBe(0);
    await new Promise((res) => setTimeout(res, 1100)); // another second: another layer name
    fs.writeFileSync(o.m('etc/two'), '2\n');
    expect(persist(o.args).status).toBe(0);
    blessAll(); // compaction takes active layers only
    const c = layers(['compact']);
    expect(c.stderr).not.toMatch(/^mkma: /m);
    expect(c.status).toBe(0);
    const [compacted] = layersIn(o.images);
    expect(layersIn(o.images)).toEqual([compacted]);
    expect(compacted).toContain('+from+');
    expect(readSavedRecord(o.U)?.layers).toHaveLength(2);

    // created in this boot and saved, then deleted: the upperdir keeps no trace of it (nothing
    // below to hide), so only the record can tell the next layer to delete it
    fs.rmSync(o.m('etc/one'));
    fs.writeFileSync(o.m('etc/three'), '3\n');
    const r = persist(o.args);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = fs.mkdtempSync(path.join(T, 'c-'));
    await unpackImages(o.images, out);
    expect(fs.readdirSync(path.join(out, 'etc')).sort()).toEqual(['hostname', 'three', 'two']);
  }, 90_000);
});
