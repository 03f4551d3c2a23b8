// `mkma install` without --yes, in a real terminal (tmux: a pty, keys typed with send-keys,
// the screen read with capture-pane), the way a person meets the confirmation: the device,
// its size and what will happen to it are shown, and only its name typed back lets install
// write. A wrong answer writes nothing and exits 2. And --wipe: an mkma stick gets a hostname
// added unless --wipe is given; with --wipe (confirmed the same way) it is partitioned anew and
// what was on it (hostnames, layers) is gone.
import { afterAll, afterEach, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parsePartitionTable } from '../../install/layout.js';
import { fakeBuild } from '../helpers/fake-build.js';
import { MKMA, WORK } from '../helpers/paths.js';

jest.setTimeout(120_000);

const TMP = path.join(WORK, 'install-confirm');
const IMG = path.join(TMP, 'stick.img');
const SESSION = `mkma-install-${process.pid}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One mkma command in a tmux pane (200x50: the paths fit on a line); its exit status printed after it. */
class Terminal {
  private started = false;

  constructor(args: string[]) {
    const cmd = `${process.execPath} ${MKMA} ${args.join(' ')}; echo "EXIT=$?"; sleep 120`;
    execFileSync('tmux', ['new-session', '-d', '-s', SESSION, '-x', '200', '-y', '50', cmd]);
    this.started = true;
  }

  screen(): string {
    return execFileSync('tmux', ['capture-pane', '-p', '-J', '-t', SESSION], { encoding: 'utf8' });
  }

  async waitFor(re: RegExp, timeoutMs = 60_000): Promise<string> {
    const t0 = Date.now();
    for (;;) {
      const s = this.screen();
      if (re.test(s)) return s;
      // the command ended without showing it: no need to wait longer
      if (Date.now() - t0 > timeoutMs || /^EXIT=[0-9]+$/m.test(s)) throw new Error(`the screen never showed ${re}:\n${s}`);
      await sleep(100);
    }
  }

  /** Types `text` and Enter. */
  type(text: string): void {
    execFileSync('tmux', ['send-keys', '-t', SESSION, '-l', text]);
    execFileSync('tmux', ['send-keys', '-t', SESSION, 'Enter']);
  }

  /** Waits for the command's end: its exit status. */
  async exit(): Promise<number> {
    const s = await this.waitFor(/^EXIT=[0-9]+$/m);
    return Number(/^EXIT=([0-9]+)$/m.exec(s)![1]);
  }

  close(): void {
    if (this.started) spawnSync('tmux', ['kill-session', '-t', SESSION]);
    this.started = false;
  }
}

let term: Terminal | null = null;
const open = (args: string[]) => (term = new Terminal(args));

const PROMPT = new RegExp(`Type the device name \\(${IMG.replace(/[.]/g, '\\.')}\\) to continue: $`, 'm');
const fingerprint = (f: string) => `${createHash('sha256').update(fs.readFileSync(f)).digest('hex')} ${fs.statSync(f).mtimeMs}`;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' });
const dataOffset = () => parsePartitionTable(sh('sgdisk', ['--print', IMG])).find((r) => r.number === 3)!.startSector * 512;
const dataLs = (dir: string) =>
  sh('debugfs', ['-R', `ls ${dir}`, `${IMG}?offset=${dataOffset()}`])
    .split(/\s+/)
    .filter((n) => /^[a-z]/.test(n) && !n.startsWith('('))
    .sort();
const dataUuid = () => sh('blkid', ['-p', '-O', String(dataOffset()), '-s', 'UUID', '-o', 'value', IMG]).trim();

let alpha: string;
let beta: string;
beforeAll(() => {
  fs.rmSync(TMP, { recursive: true, force: true });
  fs.mkdirSync(TMP, { recursive: true });
  alpha = fakeBuild(path.join(TMP, 'alpha'), 'alpha', 'alpha-1');
  beta = fakeBuild(path.join(TMP, 'beta'), 'beta', 'beta-1');
});
afterEach(() => {
  term?.close();
  term = null;
});
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

describe('mkma install asks for the device name on the terminal', () => {
  test('without a terminal and without --yes: exit 2, nothing created', () => {
    const r = spawnSync(process.execPath, [MKMA, 'install', IMG, '--size', '400M', '--esp-size', '64M', '--out', alpha], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/stdin is not a terminal, so nothing can be confirmed: check the target and run again with --yes/);
    expect(fs.existsSync(IMG)).toBe(false);
  });

  test('a wrong name: "not confirmed", exit 2, the disk image file is not even created', async () => {
    const t = open(['install', IMG, '--size', '400M', '--esp-size', '64M', '--out', alpha]);
    const asked = await t.waitFor(PROMPT);
    expect(asked).toContain(`${IMG}: new disk image file, 400 MiB`);
    expect(asked).toContain('EVERYTHING on it will be erased.');
    t.type('/dev/sdb');
    expect(await t.exit()).toBe(2);
    expect(t.screen()).toMatch(/not confirmed; nothing was written/);
    expect(fs.existsSync(IMG)).toBe(false);
  });

  test('the right name: installed', async () => {
    const t = open(['install', IMG, '--size', '400M', '--esp-size', '64M', '--out', alpha]);
    await t.waitFor(PROMPT);
    t.type(IMG);
    expect(await t.exit()).toBe(0);
    expect(t.screen()).toMatch(/mkma: alpha installed on .*stick\.img in [0-9.]+ s \(new layout; on it now: alpha\)/);
    expect(dataLs('/images/alpha')).toEqual(['base.cpio.zst', 'base.g1.cpio.zst']);
  }, 120_000);
});

describe('an mkma stick: a hostname is added, unless --wipe', () => {
  test('without --wipe the prompt says what happens (added, the rest stays), and the base name confirms too', async () => {
    // a layer alpha's running system would have written: adding beta must not touch it
    const layer = path.join(TMP, 'persistence.20261201T000000Z.cpio.zst');
    fs.writeFileSync(layer, 'a layer');
    sh('debugfs', ['-w', '-R', `write ${layer} /images/alpha/persistence.20261201T000000Z.cpio.zst`, `${IMG}?offset=${dataOffset()}`]);
    const uuid = dataUuid();
    const t = open(['install', IMG, '--out', beta]);
    const asked = await t.waitFor(PROMPT);
    expect(asked).toContain('is an mkma stick: this hostname will be added, the rest stays as it is.');
    expect(asked).not.toContain('erased');
    t.type(path.basename(IMG));
    expect(await t.exit()).toBe(0);
    expect(t.screen()).toMatch(/\(added to the stick; on it now: alpha, beta\)/);
    expect(dataUuid()).toBe(uuid);
    expect(dataLs('/images/alpha')).toEqual(['base.cpio.zst', 'base.g1.cpio.zst', 'persistence.20261201T000000Z.cpio.zst']);
  });

  test('--wipe, a wrong name: exit 2, the stick unchanged', async () => {
    const before = fingerprint(IMG);
    const t = open(['install', IMG, '--wipe', '--esp-size', '64M', '--out', alpha]);
    const asked = await t.waitFor(PROMPT);
    expect(asked).toContain(`${IMG}: disk image file, 400 MiB`);
    expect(asked).toContain('EVERYTHING on it will be erased.');
    t.type('stick');
    expect(await t.exit()).toBe(2);
    expect(fingerprint(IMG)).toBe(before);
  });

  test('--wipe, the right name: partitioned anew; the other hostname and the layers are gone', async () => {
    const uuid = dataUuid();
    const t = open(['install', IMG, '--wipe', '--esp-size', '64M', '--out', alpha]);
    await t.waitFor(PROMPT);
    t.type(IMG);
    expect(await t.exit()).toBe(0);
    expect(t.screen()).toMatch(/\(new layout; on it now: alpha\)/);
    expect(dataUuid()).not.toBe(uuid);
    expect(dataLs('/images')).toEqual(['alpha']);
    expect(dataLs('/images/alpha')).toEqual(['base.cpio.zst', 'base.g1.cpio.zst']);
  });
});
