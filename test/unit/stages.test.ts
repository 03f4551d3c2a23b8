// The stage-skip decisions of `mkma build` (builder/stages.ts): a stage runs when its inputs
// changed, when its output is gone or not the file recorded, and after --rebuild; otherwise
// its result is reused.
import { afterAll, beforeEach, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chainKeys } from '../../builder/cache.js';
import { configureInputs, mkmaFingerprint, productionDependencyDirs } from '../../builder/configure.js';
import { changedInputs, decideOutput, decideStep, digest, statOutput, StageStore, type OutputRecord } from '../../builder/stages.js';
import { parseConfigText } from '../../config/load.js';
import { REPO } from '../helpers/paths.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-stages-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const config = (text = '') => parseConfigText(text, { file: null, env: {}, defaultHostname: 'buildhost' });

describe('tree steps (kernel modules, settings, mkma install)', () => {
  const inputs = { tree: 'L1', hostname: 'a', 'mkma files': '0.1.0 abc' };
  const known = { rebuild: false, treeKnown: true };

  test('unchanged inputs on a known tree: reused', () => {
    expect(decideStep(inputs, { ...inputs }, known)).toEqual({ run: false, reason: 'inputs unchanged' });
  });

  test('changed inputs: runs, and says which', () => {
    expect(decideStep({ ...inputs, hostname: 'b' }, inputs, known)).toEqual({ run: true, reason: 'hostname changed' });
    expect(decideStep({ ...inputs, tree: 'L2', hostname: 'b' }, inputs, known)).toEqual({ run: true, reason: 'hostname, tree changed' });
    expect(decideStep({ ...inputs, extra: 'x' }, inputs, known).run).toBe(true);
  });

  test('no record, --rebuild, a replaced or half-changed tree: runs', () => {
    expect(decideStep(inputs, undefined, known)).toEqual({ run: true, reason: 'no record of an earlier run' });
    expect(decideStep(inputs, inputs, { ...known, rebuild: true })).toEqual({ run: true, reason: '--rebuild' });
    expect(decideStep(inputs, inputs, { ...known, replaced: 'a fresh bootstrap' })).toEqual({ run: true, reason: 'a fresh bootstrap' });
    expect(decideStep(inputs, inputs, { rebuild: false, treeKnown: false }).run).toBe(true);
  });

  test('changedInputs lists added, removed and changed names', () => {
    expect(changedInputs({ a: '1', b: '2', c: '3' }, { a: '1', b: '9', d: '4' })).toEqual(['b', 'c', 'd']);
  });

  test('configure inputs: hostname and root password, not what only the bootstrap uses', () => {
    const a = configureInputs(config('hostname = "h1"'));
    expect(configureInputs(config('hostname = "h1"\npackages = ["vim"]'))).toEqual(a);
    expect(changedInputs(configureInputs(config('hostname = "h2"')), a)).toEqual(['hostname']);
    expect(changedInputs(configureInputs(config('hostname = "h1"\nroot_password = "empty"')), a)).toEqual(['root password']);
  });
});

describe('outputs (base, initramfs, kernel)', () => {
  const file = path.join(tmp, 'base.cpio.zst');
  const inputs = { tree: 'T1', level: '3', 'mkma files': '0.1.0 abc' };
  let rec: OutputRecord;
  beforeEach(() => {
    fs.writeFileSync(file, 'archive contents');
    rec = { inputs, ...statOutput(file)!, sha256: 'recorded' };
  });

  test('unchanged inputs and the recorded file: reused', () => {
    expect(decideOutput(inputs, rec, file, { rebuild: false })).toEqual({ run: false, reason: 'inputs unchanged, base.cpio.zst as recorded' });
  });

  test('changed inputs: runs', () => {
    expect(decideOutput({ ...inputs, tree: 'T2' }, rec, file, { rebuild: false })).toEqual({ run: true, reason: 'tree changed' });
    expect(decideOutput({ ...inputs, level: '19' }, rec, file, { rebuild: false })).toEqual({ run: true, reason: 'level changed' });
  });

  test('output missing: runs', () => {
    fs.rmSync(file);
    expect(decideOutput(inputs, rec, file, { rebuild: false })).toEqual({ run: true, reason: 'base.cpio.zst is missing' });
  });

  test('output rewritten (same size), truncated or replaced: runs', () => {
    const later = new Date(Date.now() + 5000);
    fs.writeFileSync(file, 'ARCHIVE CONTENTS');
    fs.utimesSync(file, later, later);
    expect(decideOutput(inputs, rec, file, { rebuild: false }).reason).toMatch(/not the file recorded/);
    fs.truncateSync(file, 3);
    expect(decideOutput(inputs, rec, file, { rebuild: false }).run).toBe(true);
    // another file with the same size and mtime put in its place (mv): another inode
    const other = path.join(tmp, 'other');
    fs.writeFileSync(other, 'archive contents');
    const st = fs.statSync(file);
    fs.writeFileSync(file, 'archive contents');
    const r2: OutputRecord = { inputs, ...statOutput(file)!, sha256: 'recorded' };
    fs.utimesSync(other, st.atime, fs.statSync(file).mtime);
    fs.renameSync(other, file);
    expect(decideOutput(inputs, r2, file, { rebuild: false }).reason).toMatch(/not the file recorded/);
  });

  test('no record or --rebuild: runs', () => {
    expect(decideOutput(inputs, undefined, file, { rebuild: false })).toEqual({ run: true, reason: 'no record of an earlier run' });
    expect(decideOutput(inputs, rec, file, { rebuild: true })).toEqual({ run: true, reason: '--rebuild' });
  });
});

describe('the record (OUT/.cache/stages.json)', () => {
  test('a tree being changed is unknown until it is stamped; the stamp changes with every change', () => {
    const dir = path.join(tmp, 'cache1');
    const s = new StageStore(dir);
    expect(s.existed).toBe(false);
    expect(s.treeKnown).toBe(true); // nothing recorded: no claim to trust either way
    s.treeChanged({ lineage: 'L', steps: { settings: { hostname: 'a' } } });
    const t1 = s.record.tree;
    expect(t1).toMatch(/^[0-9a-f]{24}$/);
    const again = new StageStore(dir);
    expect(again.existed).toBe(true);
    expect(again.treeKnown).toBe(true);
    expect(again.record.steps).toEqual({ settings: { hostname: 'a' } });
    again.treeChanging();
    // an interrupted build: the next one finds the tree unknown
    const interrupted = new StageStore(dir);
    expect(interrupted.treeKnown).toBe(false);
    interrupted.treeChanged({ lineage: 'L', steps: {} });
    expect(interrupted.record.tree).not.toBe(t1);
    expect(new StageStore(dir).treeKnown).toBe(true);
  });

  test('an unreadable or foreign record counts as none', () => {
    const dir = path.join(tmp, 'cache2');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'stages.json'), '{"version": 7}');
    expect(new StageStore(dir).existed).toBe(false);
    fs.writeFileSync(path.join(dir, 'stages.json'), 'not json');
    expect(new StageStore(dir).record.outputs).toEqual({});
  });

  test('digest separates its parts', () => {
    expect(digest('ab', 'c')).not.toBe(digest('a', 'bc'));
    expect(digest('x')).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe("mkma's own files in the image", () => {
  test('production dependencies are what npm ls --omit=dev lists', () => {
    const r = spawnSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: REPO, encoding: 'utf8' });
    const npm = r.stdout.split('\n').filter((d) => d.startsWith(`${REPO}/node_modules/`)).sort();
    expect(npm.length).toBeGreaterThan(3);
    expect(productionDependencyDirs(REPO)).toEqual([...new Set(npm)]);
  });

  test('the fingerprint is stable and covers mkma and its dependencies', () => {
    const f = mkmaFingerprint(REPO);
    expect(f.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(f.ownHash).not.toBe(f.hash);
    expect(f.files).toBeGreaterThan(100);
    expect(mkmaFingerprint(REPO)).toEqual(f);
  });
});

describe('preset chain and configure settings', () => {
  test('what configure applies joins the first link only when given: the bootstrap key stays', () => {
    const plain = chainKeys('cfg', ['p1', 'p2']);
    const h1 = chainKeys('cfg', ['p1', 'p2'], 'hostname-a');
    const h2 = chainKeys('cfg', ['p1', 'p2'], 'hostname-b');
    expect(h1[0]).toBe('cfg');
    expect(h2[0]).toBe('cfg');
    expect(h1[1]).not.toBe(plain[1]);
    expect(h2[1]).not.toBe(h1[1]);
    expect(h2[2]).not.toBe(h1[2]);
    expect(chainKeys('cfg', ['p1'], '')).toEqual(chainKeys('cfg', ['p1']));
  });
});
