import { describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfigText } from '../../config/load.js';
import { applyBootTuning, JOURNALD_DROPIN, MASKED_GENERATORS, removeBootTuning } from '../../builder/boot-tuning.js';
import { configureInputs } from '../../builder/configure.js';

const config = (text = '') => parseConfigText(text, { file: null, env: {}, defaultHostname: 'buildhost' });

function tree(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-tuning-'));
  for (const d of ['usr/bin', 'etc/systemd', 'var']) fs.mkdirSync(path.join(root, d), { recursive: true });
  return root;
}

/** systemd's ConditionNeedsUpdate= (src/shared/condition.c), for the stamp in DIR. */
function needsUpdate(root: string, dir: string): boolean {
  const usr = fs.statSync(path.join(root, 'usr'), { bigint: true });
  let other: fs.BigIntStats;
  try {
    other = fs.statSync(path.join(root, dir, '.updated'), { bigint: true });
  } catch {
    return true;
  }
  const [us, un] = [usr.mtimeNs / 1000000000n, usr.mtimeNs % 1000000000n];
  const [os_, on] = [other.mtimeNs / 1000000000n, other.mtimeNs % 1000000000n];
  if (us !== os_) return us > os_;
  if (un === 0n || on > 0n) return un > on;
  const m = /^TIMESTAMP_NSEC=(\d+)$/m.exec(fs.readFileSync(path.join(root, dir, '.updated'), 'utf8'));
  return !m || usr.mtimeNs > BigInt(m[1]);
}

describe('boot tuning (boot_tuning)', () => {
  test('is on by default and can be turned off; turning it off reruns the configure step', () => {
    expect(config().bootTuning).toBe(true);
    expect(config('boot_tuning = false').bootTuning).toBe(false);
    expect(configureInputs(config())['boot tuning']).not.toBe(configureInputs(config('boot_tuning = false'))['boot tuning']);
  });

  test('the needs-update stamps make ConditionNeedsUpdate false, to the nanosecond', () => {
    const root = tree();
    // a /usr mtime with nanoseconds that a double cannot hold exactly
    fs.writeFileSync(path.join(root, 'usr/bin/x'), '');
    expect(needsUpdate(root, 'etc')).toBe(true);
    applyBootTuning(root);
    for (const d of ['etc', 'var']) {
      expect(needsUpdate(root, d)).toBe(false);
      const ns = fs.statSync(path.join(root, 'usr'), { bigint: true }).mtimeNs;
      expect(fs.readFileSync(path.join(root, d, '.updated'), 'utf8')).toContain(`TIMESTAMP_NSEC=${ns}\n`);
    }
    // as a cpio base has it: whole seconds on both
    const sec = Math.floor(fs.statSync(path.join(root, 'usr')).mtimeMs / 1000);
    for (const p of ['usr', 'etc/.updated']) fs.utimesSync(path.join(root, p), sec, sec);
    expect(needsUpdate(root, 'etc')).toBe(false);
    // a package installed after boot touches /usr: the update units run again
    fs.utimesSync(path.join(root, 'usr'), sec + 5, sec + 5);
    expect(needsUpdate(root, 'etc')).toBe(true);
  });

  test('machine-id: absent or "uninitialized" becomes empty (not a first boot); an id a preset wrote is kept', () => {
    const root = tree();
    applyBootTuning(root);
    expect(fs.readFileSync(path.join(root, 'etc/machine-id'), 'utf8')).toBe('');
    fs.writeFileSync(path.join(root, 'etc/machine-id'), 'uninitialized\n');
    applyBootTuning(root);
    expect(fs.readFileSync(path.join(root, 'etc/machine-id'), 'utf8')).toBe('');
    fs.writeFileSync(path.join(root, 'etc/machine-id'), '0123456789abcdef0123456789abcdef\n');
    applyBootTuning(root);
    expect(fs.readFileSync(path.join(root, 'etc/machine-id'), 'utf8')).toBe('0123456789abcdef0123456789abcdef\n');
  });

  test('generators masked, journal volatile; idempotent; removed again when turned off', () => {
    const root = tree();
    applyBootTuning(root);
    const gen = (g: string) => path.join(root, 'etc/systemd/system-generators', g);
    for (const g of MASKED_GENERATORS) expect(fs.readlinkSync(gen(g))).toBe('/dev/null');
    expect(fs.readFileSync(path.join(root, JOURNALD_DROPIN), 'utf8')).toMatch(/^Storage=volatile$/m);
    const before = fs.statSync(path.join(root, 'etc/.updated'), { bigint: true }).mtimeNs;
    const dropinBefore = fs.statSync(path.join(root, JOURNALD_DROPIN), { bigint: true }).mtimeNs;
    applyBootTuning(root);
    expect(fs.statSync(path.join(root, 'etc/.updated'), { bigint: true }).mtimeNs).toBe(before);
    expect(fs.statSync(path.join(root, JOURNALD_DROPIN), { bigint: true }).mtimeNs).toBe(dropinBefore);
    // a generator the owner masked differently is not ours to remove
    fs.rmSync(gen(MASKED_GENERATORS[0]));
    fs.symlinkSync('/elsewhere', gen(MASKED_GENERATORS[0]));
    removeBootTuning(root);
    expect(fs.readlinkSync(gen(MASKED_GENERATORS[0]))).toBe('/elsewhere');
    for (const g of MASKED_GENERATORS.slice(1)) expect(fs.existsSync(gen(g))).toBe(false);
    expect(fs.existsSync(path.join(root, JOURNALD_DROPIN))).toBe(false);
    expect(fs.existsSync(path.join(root, 'etc/.updated'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'var/.updated'))).toBe(false);
  });
});
