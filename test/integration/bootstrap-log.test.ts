// The bootstrap's steps and its log, with a fake mmdebstrap on PATH that prints lines in the
// form the real one prints with --verbose (test/fixtures/mmdebstrap-verbose.txt: mmdebstrap
// 1.3.5's "I:" phases, apt's and dpkg's lines, shortened) and exits as told. The real
// bootstrap's log is checked by test/e2e/build.test.ts.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BootstrapSteps } from '../../builder/bootstrap-steps.js';
import { BootstrapError, mmdebstrap } from '../../builder/mmdebstrap.js';
import { parseConfigText } from '../../config/load.js';
import { MKMA, REPO } from '../helpers/paths.js';

const FIXTURE = path.join(REPO, 'test/fixtures/mmdebstrap-verbose.txt');
const config = parseConfigText('', { file: null, env: {}, defaultHostname: 'buildhost' });

let tmp: string;
let bin: string;
const savedPath = process.env.PATH;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-bootstrap-log-'));
  bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  // the target is mmdebstrap's second-last argument; FAKE_MMDEBSTRAP_FAIL: fail after N lines
  fs.writeFileSync(
    path.join(bin, 'mmdebstrap'),
    [
      '#!/bin/sh',
      'eval "target=\\${$(($# - 1))}"',
      'echo "$*" > "$FAKE_MMDEBSTRAP_ARGS"',
      'if [ -n "$FAKE_MMDEBSTRAP_FAIL" ]; then',
      `  head -n "$FAKE_MMDEBSTRAP_FAIL" '${FIXTURE}' >&2`,
      '  echo "E: Unable to locate package nosuch" >&2',
      '  echo "E: apt-get --yes install failed" >&2',
      '  exit 1',
      'fi',
      'mkdir -p "$target/etc"',
      // stdout and stderr both count, as mmdebstrap writes to both
      `head -n 12 '${FIXTURE}'`,
      'sleep 0.2',
      `tail -n +13 '${FIXTURE}' >&2`,
    ].join('\n') + '\n',
    { mode: 0o755 },
  );
  process.env.PATH = `${bin}:${savedPath}`;
});
afterAll(() => {
  process.env.PATH = savedPath;
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe("mmdebstrap's steps", () => {
  test('its phases are the steps; packages fetched, unpacked and set up are the progress, of the total apt names', () => {
    const s = new BootstrapSteps();
    const events = fs
      .readFileSync(FIXTURE, 'utf8')
      .split('\n')
      .map((l) => s.line(l))
      .filter((e) => e !== null);
    expect(s.steps).toEqual([
      'updating the package lists',
      'downloading packages',
      'extracting the essential packages',
      'installing the essential packages',
      'installing the remaining packages',
      'cleaning the package lists and apt cache',
    ]);
    const progress = events.flatMap((e) => ('progress' in e ? [e.progress] : []));
    expect(progress).toEqual([
      '1 of 3 fetched: base-files (73.0 kB)',
      '2 of 3 fetched: bash (1512 kB)',
      '3 of 3 fetched: coreutils (3048 kB)',
      '1 of 3 unpacked: base-files',
      '2 of 3 unpacked: bash',
      '1 of 3 set up: base-files',
      '2 of 3 set up: bash',
      '1 of 2 unpacked: systemd',
      '2 of 2 unpacked: udev',
      '1 of 2 set up: systemd',
      '2 of 2 set up: udev',
    ]);
    expect(events[events.length - 1]).toEqual({ done: 42.1234 });
  });
});

describe('the bootstrap log (fake mmdebstrap)', () => {
  test('the full output, stdout and stderr, goes to the log (0600 in a 0700 directory); the steps are reported as they come', async () => {
    const logFile = path.join(tmp, 'out1/.cache/logs/00-bootstrap.log');
    process.env.FAKE_MMDEBSTRAP_ARGS = path.join(tmp, 'args1');
    const steps: string[] = [];
    const progress: string[] = [];
    await mmdebstrap(config, path.join(tmp, 'out1/chroot.new'), {
      logFile,
      onStep: (s) => steps.push(s),
      onProgress: (p) => progress.push(p),
    });
    expect(fs.readFileSync(process.env.FAKE_MMDEBSTRAP_ARGS, 'utf8')).toMatch(/^--verbose --variant=minbase /);
    expect(fs.statSync(logFile).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(logFile)).mode & 0o777).toBe(0o700);
    // every line, in order (stdout's first: the fake writes it first and exits after stderr)
    expect(fs.readFileSync(logFile, 'utf8')).toBe(fs.readFileSync(FIXTURE, 'utf8'));
    expect(steps).toHaveLength(6);
    expect(progress).toContain('2 of 2 set up: udev');
  });

  test("a failure: apt's reason, the last lines of the output and the log's name; the new tree is removed", async () => {
    const logFile = path.join(tmp, 'out2/.cache/logs/00-bootstrap.log');
    const target = path.join(tmp, 'out2/chroot.new');
    process.env.FAKE_MMDEBSTRAP_FAIL = '17';
    let err: unknown;
    try {
      await mmdebstrap(config, target, { logFile, onStep: () => {}, onProgress: () => {} });
    } catch (e) {
      err = e;
    } finally {
      delete process.env.FAKE_MMDEBSTRAP_FAIL;
    }
    expect(err).toBeInstanceOf(BootstrapError);
    const message = (err as Error).message;
    expect(message).toMatch(/^mmdebstrap failed:\n {2}E: Unable to locate package nosuch\n/);
    expect(message).toContain(
      [
        '  last lines of its output:',
        '    Reading package lists...',
        '    Building dependency tree...',
        '    The following NEW packages will be installed:',
        '      base-files base-passwd bash coreutils dash',
        '    0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.',
        '    Need to get 2960 kB of archives.',
        '    E: Unable to locate package nosuch',
      ].join('\n'),
    );
    expect(message).toMatch(/\n {4}E: apt-get --yes install failed\n {2}full log: .*\/out2\/\.cache\/logs\/00-bootstrap\.log$/);
    expect(fs.readFileSync(logFile, 'utf8').split('\n')).toHaveLength(17 + 2 + 1);
    expect(fs.existsSync(target)).toBe(false);
  });

  const build = (args: string[]) =>
    spawnSync(process.execPath, [MKMA, 'build', '--out', path.join(tmp, 'out3'), ...args], {
      encoding: 'utf8',
      env: { ...process.env, MKMA_QEMU_TEST: '', FAKE_MMDEBSTRAP_FAIL: '40', FAKE_MMDEBSTRAP_ARGS: path.join(tmp, 'args3') },
      timeout: 60_000,
    });

  test('mkma build, not on a terminal: one plain line per step, then the error naming the log (exit 1)', () => {
    const r = build([]);
    expect(r.status).toBe(1);
    const lines = r.stderr.split('\n');
    const from = lines.findIndex((l) => l.startsWith('==> bootstrap: mmdebstrap trixie'));
    expect(lines.slice(from + 1, from + 6)).toEqual([
      '    updating the package lists',
      '    downloading packages',
      '    extracting the essential packages',
      '    installing the essential packages',
      '    installing the remaining packages',
    ]);
    expect(r.stderr).not.toContain('\r');
    expect(r.stderr).toContain(`full log: ${path.join(tmp, 'out3/.cache/logs/00-bootstrap.log')}`);
  });

  test('mkma build --quiet: no steps, only the error', () => {
    const r = build(['--quiet']);
    expect(r.status).toBe(1);
    expect(r.stderr).not.toContain('updating the package lists');
    expect(r.stderr).toMatch(/^mkma: mmdebstrap failed:/m);
  });
});
