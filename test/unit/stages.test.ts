// The stage-skip decisions of `mkma build` (builder/stage.ts, one mechanism for every stage): a
// stage runs when its inputs changed, when its output is gone or not the file recorded, when
// the tree its steps edited was replaced, and after --rebuild; otherwise its result is reused.
import { afterAll, beforeEach, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureInputs, mkmaFingerprint, productionDependencyDirs } from '../../builder/configure.js';
import { chainKeys } from '../../builder/snapshots.js';
import {
  changedInputs,
  decide,
  digest,
  fileOptions,
  statOutput,
  StageRecords,
  type StageInputs,
  type StageRecord,
} from '../../builder/stage.js';
import { WorkingTree } from '../../builder/stages/context.js';
import { parseConfigText } from '../../config/load.js';
import { REPO } from '../helpers/paths.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-stages-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const config = (text = '') => parseConfigText(text, { file: null, env: {}, defaultHostname: 'buildhost' });

describe('tree steps (kernel modules, settings, mkma install)', () => {
  const inputs = { tree: 'L1', hostname: 'a', 'mkma files': '0.1.0 abc' };
  const known = { rebuild: false };
  /** a configure step's decision, as builder/stages/configure.ts makes it */
  const decideStep = (now: StageInputs, before: StageInputs | undefined, o: { rebuild: boolean; invalid?: string }) =>
    decide(now, before && { inputs: before }, o);
  /** the working tree of a build whose record is as given (none, or left unfinished) */
  const tree = (known: boolean, replaced?: string) => {
    const t = new WorkingTree(new StageRecords(fs.mkdtempSync(path.join(tmp, 'tree-'))), known);
    t.settle({ replaced, touched: false });
    return t;
  };

  test('unchanged inputs on a known tree: reused', () => {
    expect(decideStep(inputs, { ...inputs }, { ...known, invalid: tree(true).stale })).toEqual({ run: false, reason: 'inputs unchanged' });
  });

  test('changed inputs: runs, and says which', () => {
    expect(decideStep({ ...inputs, hostname: 'b' }, inputs, known)).toEqual({ run: true, reason: 'hostname changed' });
    expect(decideStep({ ...inputs, tree: 'L2', hostname: 'b' }, inputs, known)).toEqual({ run: true, reason: 'hostname, tree changed' });
    expect(decideStep({ ...inputs, extra: 'x' }, inputs, known).run).toBe(true);
  });

  test('no record, --rebuild, a replaced or half-changed tree: runs', () => {
    expect(decideStep(inputs, undefined, known)).toEqual({ run: true, reason: 'no record of an earlier run' });
    expect(decideStep(inputs, inputs, { ...known, rebuild: true })).toEqual({ run: true, reason: '--rebuild' });
    expect(decideStep(inputs, inputs, { ...known, invalid: tree(true, 'a fresh bootstrap').stale })).toEqual({
      run: true,
      reason: 'a fresh bootstrap',
    });
    expect(decideStep(inputs, inputs, { ...known, invalid: tree(false).stale })).toEqual({
      run: true,
      reason: 'the tree was left unfinished by an interrupted build',
    });
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
  let rec: StageRecord;
  const recorded = (): StageRecord => ({ inputs, file: { ...statOutput(file)!, sha256: 'recorded' } });
  const decideOutput = (now: StageInputs, before: StageRecord | undefined, o: { rebuild: boolean }) =>
    decide(now, before, fileOptions(file, o.rebuild));
  beforeEach(() => {
    fs.writeFileSync(file, 'archive contents');
    rec = recorded();
  });

  test('unchanged inputs and the recorded file: reused', () => {
    expect(decideOutput(inputs, rec, { rebuild: false })).toEqual({ run: false, reason: 'inputs unchanged, base.cpio.zst as recorded' });
  });

  test('changed inputs: runs', () => {
    expect(decideOutput({ ...inputs, tree: 'T2' }, rec, { rebuild: false })).toEqual({ run: true, reason: 'tree changed' });
    expect(decideOutput({ ...inputs, level: '19' }, rec, { rebuild: false })).toEqual({ run: true, reason: 'level changed' });
  });

  test('output missing: runs', () => {
    fs.rmSync(file);
    expect(decideOutput(inputs, rec, { rebuild: false })).toEqual({ run: true, reason: 'base.cpio.zst is missing' });
  });

  test('output rewritten (same size), truncated or replaced: runs', () => {
    const later = new Date(Date.now() + 5000);
    fs.writeFileSync(file, 'ARCHIVE CONTENTS');
    fs.utimesSync(file, later, later);
    expect(decideOutput(inputs, rec, { rebuild: false }).reason).toMatch(/not the file recorded/);
    fs.truncateSync(file, 3);
    expect(decideOutput(inputs, rec, { rebuild: false }).run).toBe(true);
    // another file with the same size and mtime put in its place (mv): another inode
    const other = path.join(tmp, 'other');
    fs.writeFileSync(other, 'archive contents');
    const st = fs.statSync(file);
    fs.writeFileSync(file, 'archive contents');
    const r2 = recorded();
    fs.utimesSync(other, st.atime, fs.statSync(file).mtime);
    fs.renameSync(other, file);
    expect(decideOutput(inputs, r2, { rebuild: false }).reason).toMatch(/not the file recorded/);
  });

  test('no record or --rebuild: runs', () => {
    expect(decideOutput(inputs, undefined, { rebuild: false })).toEqual({ run: true, reason: 'no record of an earlier run' });
    expect(decideOutput(inputs, rec, { rebuild: true })).toEqual({ run: true, reason: '--rebuild' });
  });
});

describe('the record (OUT/.cache/stages.json)', () => {
  test('a tree being changed is unknown until it is stamped; the stamp changes with every change', () => {
    const dir = path.join(tmp, 'cache1');
    const s = new StageRecords(dir);
    expect(s.existed).toBe(false);
    expect(s.treeKnown).toBe(true); // nothing recorded: no claim to trust either way
    s.treeChanged('L', { settings: { hostname: 'a' } });
    const t1 = s.tree.stamp;
    expect(t1).toMatch(/^[0-9a-f]{24}$/);
    const again = new StageRecords(dir);
    expect(again.existed).toBe(true);
    expect(again.treeKnown).toBe(true);
    expect(again.tree.steps).toEqual({ settings: { hostname: 'a' } });
    again.treeChanging();
    // an interrupted build: the next one finds the tree unknown
    const interrupted = new StageRecords(dir);
    expect(interrupted.treeKnown).toBe(false);
    interrupted.treeChanged('L', {});
    expect(interrupted.tree.stamp).not.toBe(t1);
    expect(new StageRecords(dir).treeKnown).toBe(true);
  });

  test('the chain state goes only while a tree stage replaces the tree, not for an edit in place', () => {
    const dir = path.join(tmp, 'cache3');
    const s = new StageRecords(dir);
    s.treeHolds('K0', { name: 'bootstrap', inputs: { configuration: 'K0' } });
    s.treeChanged('L', {});
    s.treeChanging();
    expect(new StageRecords(dir).tree).toMatchObject({ state: 'K0', stamp: null, lineage: null });
    s.treeChanging(true);
    expect(new StageRecords(dir).tree.state).toBeNull();
    expect(new StageRecords(dir).stage('bootstrap')).toEqual({ inputs: { configuration: 'K0' } });
  });

  test('an unreadable or foreign record counts as none', () => {
    const dir = path.join(tmp, 'cache2');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'stages.json'), '{"version": 7}');
    expect(new StageRecords(dir).existed).toBe(false);
    fs.writeFileSync(path.join(dir, 'stages.json'), 'not json');
    expect(new StageRecords(dir).record.stages).toEqual({});
  });

  test('digest separates its parts', () => {
    expect(digest('ab', 'c')).not.toBe(digest('a', 'bc'));
    expect(digest('x')).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe("mkma's own files in the image", () => {
  test('production dependencies are what npm ls --omit=dev lists', () => {
    const r = spawnSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: REPO, encoding: 'utf8' });
    const npm = r.stdout
      .split('\n')
      .filter((d) => d.startsWith(`${REPO}/node_modules/`))
      .sort();
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
