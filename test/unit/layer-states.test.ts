// A layer's state in its file name (docs/FORMAT.md "Layer names and states"): the TypeScript
// reader (format/names.ts) and the init's (layer_state in init/templates/layer-common.sh)
// against one fixture, test/fixtures/layer-states.txt; writing a name back; and the init's
// plan_layers under busybox: which layers a boot applies (states, mkma_layers=none|N|until=ID,
// the same id twice), what it records, and the try counting (renames) before applying.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { appliedAtBoot, layerFileName, NEW_LAYER_STATE, parseLayerName, layerNameFor } from '../../format/names.js';
import { BUSYBOX, layerFunctions, makeBusyboxBin } from '../fixtures/layers.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-layer-states-'));
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

let BIN = '';
let FUNCS = '';
beforeAll(() => {
  BIN = makeBusyboxBin(path.join(TMP, 'busybox'));
  FUNCS = path.join(TMP, 'funcs.sh');
  fs.writeFileSync(FUNCS, layerFunctions('native'));
});

function bbsh(code: string, args: string[] = [], env: Record<string, string> = {}) {
  const scratch = fs.mkdtempSync(path.join(TMP, 'run-'));
  const r = spawnSync(BUSYBOX, ['sh', '-c', `. "$MKMA_FUNCS"\n${code}`, 'sh', ...args], {
    env: { PATH: BIN, LC_ALL: 'C', MKMA_FUNCS: FUNCS, MKMA_TMP: scratch, MKMA_NO_KMSG: '1', ...env },
    encoding: 'utf8',
  });
  const recordFile = path.join(scratch, 'layers');
  return { ...r, record: fs.existsSync(recordFile) ? fs.readFileSync(recordFile, 'utf8') : '' };
}

const cases = fs
  .readFileSync(path.join(process.cwd(), 'test/fixtures/layer-states.txt'), 'utf8')
  .split('\n')
  .filter((l) => l && !l.startsWith('#'))
  .map((l) => l.split('\t') as [string, string]);

describe('layer names and states', () => {
  test('the fixture has the cases it claims', () => {
    const states = new Set(cases.map(([, e]) => e.split(' ')[1]));
    expect([...states].sort()).toEqual(['active', 'disabled', 'failed', 'trial', undefined].sort());
    expect(cases.length).toBeGreaterThan(30);
  });

  test('parseLayerName reads every line as the fixture says', () => {
    for (const [name, expected] of cases) {
      const p = parseLayerName(name);
      const got = p ? `${p.id} ${p.status} ${p.triesLeft} ${p.triesDone} ${p.pinned ? 1 : 0}` : '-';
      expect(`${name}\t${got}`).toBe(`${name}\t${expected}`);
    }
  });

  test('the init reads every line alike (layer_state under busybox)', () => {
    const list = path.join(TMP, 'states.txt');
    fs.writeFileSync(list, cases.map(([n]) => n).join('\n') + '\n');
    const r = bbsh(
      `while IFS= read -r n; do
        if layer_state "$n"; then printf '%s\\t%s %s %s %s %s\\n' "$n" "$L_ID" "$L_STATUS" "$L_LEFT" "$L_DONE" "\${L_PINNED:-0}"
        else printf '%s\\t-\\n' "$n"; fi
      done <"$1"`,
      [list],
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(cases.map(([n, e]) => `${n}\t${e}`));
  });

  test('a state written back is the name read (TypeScript and shell)', () => {
    for (const [name, expected] of cases) {
      if (expected === '-') continue;
      const p = parseLayerName(name)!;
      expect(layerFileName(p.id, p)).toBe(name);
      const r = bbsh('layer_state "$1" && layer_name "$L_ID" "$L_STATUS" "$L_LEFT" "$L_DONE" "$L_PINNED" && printf %s "$L_NAME"', [name]);
      expect(r.stdout).toBe(name);
    }
  });

  test('a new layer of mkma persist is on trial with 3 tries; old names are active', () => {
    const n = layerNameFor(new Date('2026-11-22T02:15:00Z'), '', NEW_LAYER_STATE);
    expect(n).toBe('persistence.20261122T021500Z@trial-3-0.cpio.zst');
    expect(appliedAtBoot(parseLayerName(n)!)).toBe(true);
    expect(appliedAtBoot(parseLayerName('persistence.1.cpio.zst')!)).toBe(true);
    expect(appliedAtBoot(parseLayerName('persistence.1@trial-0-3.cpio.zst')!)).toBe(false);
    expect(appliedAtBoot(parseLayerName('persistence.1@disabled,pinned.cpio.zst')!)).toBe(false);
    expect(appliedAtBoot(parseLayerName('persistence.1@failed-3.cpio.zst')!)).toBe(false);
  });
});

describe('plan_layers: what a boot applies, and why not the others', () => {
  function images(name: string, files: string[]): string {
    const dir = path.join(TMP, name);
    fs.mkdirSync(dir);
    for (const f of files) fs.writeFileSync(path.join(dir, f), '');
    return dir;
  }
  const P = (s: string) => `persistence.${s}.cpio.zst`;
  const plan = (dir: string, env: Record<string, string> = {}) => {
    const r = bbsh('plan_layers "$1"', [dir], env);
    return {
      applied: r.stdout.split('\n').filter(Boolean),
      record: r.record.split('\n').filter(Boolean),
      stderr: r.stderr,
      files: fs.readdirSync(dir).sort(),
    };
  };
  const ALL = [P('1'), P('2@disabled'), P('3@trial-2-1'), P('4@failed-3,pinned'), P('5@trial-0-3'), P('6@pinned'), P('07')];

  test('all: active, pinned and trial with tries left; nothing renamed without counting', () => {
    const d = images('all', ALL);
    const r = plan(d);
    expect(r.applied).toEqual([P('1'), P('3@trial-2-1'), P('6@pinned'), P('07')]);
    expect(r.record).toEqual([
      `skipped ${P('2@disabled')} disabled`,
      `skipped ${P('4@failed-3,pinned')} failed (3 tries)`,
      `skipped ${P('5@trial-0-3')} failed (3 tries)`,
    ]);
    expect(r.files).toEqual([...ALL].sort());
  });

  test('counting tries: a trial layer is renamed to one try fewer and applied; one without tries to failed', () => {
    const d = images('count', ALL);
    const r = plan(d, { MKMA_COUNT_TRIES: '1' });
    expect(r.applied).toEqual([P('1'), P('3@trial-1-2'), P('6@pinned'), P('07')]);
    expect(r.record).toContain(`skipped ${P('5@failed-3')} failed (3 tries)`);
    expect(r.files).toEqual([P('07'), P('1'), P('2@disabled'), P('3@trial-1-2'), P('4@failed-3,pinned'), P('5@failed-3'), P('6@pinned')]);
    expect(r.stderr).toContain('layer 3 on trial: try 2 of 3');
    expect(r.stderr).toContain('LAYER FAILED 5: no boot with it was marked good in 3 tries');
  });

  test('three boots without a good one, then the fourth skips it', () => {
    const d = images('three', [P('1'), P('9@trial-3-0')]);
    const seen: string[][] = [];
    for (let boot = 0; boot < 4; boot++) seen.push(plan(d, { MKMA_COUNT_TRIES: '1' }).applied);
    expect(seen).toEqual([[P('1'), P('9@trial-2-1')], [P('1'), P('9@trial-1-2')], [P('1'), P('9@trial-0-3')], [P('1')]]);
    expect(fs.readdirSync(d).sort()).toEqual([P('1'), P('9@failed-3')]);
  });

  test('mkma_layers=N: the first N the states allow; later trial layers are not counted', () => {
    const d = images('n', ALL);
    const r = plan(d, { MKMA_LAYERS: '2', MKMA_COUNT_TRIES: '1' });
    expect(r.applied).toEqual([P('1'), P('3@trial-1-2')]);
    expect(r.record).toContain(`skipped ${P('6@pinned')} beyond mkma_layers=2`);
    expect(r.record).toContain(`skipped ${P('07')} beyond mkma_layers=2`);
    expect(plan(images('zero', [P('1')]), { MKMA_LAYERS: '0' }).applied).toEqual([]);
  });

  test('mkma_layers=until=ID: up to that layer; an unknown id boots the base alone; none applies nothing', () => {
    const d = images('until', ALL);
    const r = plan(d, { MKMA_LAYERS: 'until=3' });
    expect(r.applied).toEqual([P('1'), P('3@trial-2-1')]);
    expect(r.record).toContain(`skipped ${P('07')} after mkma_layers=until=3`);
    const u = plan(d, { MKMA_LAYERS: 'until=42' });
    expect(u.applied).toEqual([]);
    expect(u.stderr).toContain('WARNING mkma_layers=until=42: no such layer: booting the base alone');
    const n = plan(d, { MKMA_LAYERS: 'none', MKMA_COUNT_TRIES: '1' });
    expect(n.applied).toEqual([]);
    expect(n.record).toHaveLength(ALL.length);
    expect(n.files).toEqual([...ALL].sort());
  });

  test('the same id under two names is applied once', () => {
    const d = images('dup', [P('1'), P('1@pinned'), P('2')]);
    const r = plan(d);
    expect(r.applied).toEqual([P('1'), P('2')]);
    expect(r.record).toEqual([`skipped ${P('1@pinned')} another file holds the same layer`]);
  });
});
