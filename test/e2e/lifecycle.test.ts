// A layer's life in real boots (QEMU, TCG; issue 12), one sequence on a copy of the shared test
// image (its own disk), eight boots:
//   1. persist A, then B in the same boot: B's layer holds only B; both are on trial;
//   2. reboot: both applied (one try each) and marked good by mkma-boot-good.service: active;
//   3. mkma_layers=1: only A; `mkma layers rollback` in the guest disables B;
//      on the host: `mkma chroot --yes -- useradd alice`;
//   4. only A, and alice exists; then a layer C that masks mkma-boot-good.service is persisted;
//      on the host: a copy of A with a flipped byte (D) — `mkma verify` exits 1 naming it;
//   5-7. C is tried (no boot with it is marked good); D is skipped as damaged (boot 5 with
//      mkma_verify=1), by name, on the console and in `mkma layers`;
//   8. the init skips C (failed after 3 tries, said on the console), multi-user is reached, and
//      `mkma layers` shows C failed with its tries.
import { describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readManifest } from '../../format/reader.js';
import { BASE_NAME, BUILD_INFO_NAME, INITRAMFS_NAME, KERNEL_NAME } from '../../format/names.js';
import { createReporter } from '../../lib/progress.js';
import { describeSmoke, IMAGES_PATH, smokeBoot, type SmokeResult } from '../../qemu/smoke.js';
import { layerInAnyState } from '../helpers/layer-names.js';
import { IMAGE_OUT, MKMA } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';

const DIR = ownWorkDir('e2e-lifecycle');
/** the shared image's kernel, initramfs and base, linked: smokeBoot keeps its disk in OUT/qemu */
const OUT = path.join(DIR, 'out');
const MNT = path.join(DIR, 'mnt');

/** Shell for every boot's run.sh: `r NAME VALUE` prints a check; `layers TAG` mkma layers, a line per layer. */
const PRELUDE = String.raw`
set -u
r() { printf 'check %s: %s\n' "$1" "$2"; }
layers() {
	mkma layers --json | node -e '
let s = "";
process.stdin.on("data", (d) => (s += d)).on("end", () => {
	for (const l of JSON.parse(s).layers)
		console.log(["layer", process.argv[1], l.id, l.message, l.state, l.triesLeft, l.triesDone, l.skippedAtBoot ?? "applied"].join("|"));
});' "$1"
}
# mkma-boot-good.service runs after multi-user, as this hook does: start it (joins its job, or
# runs it again: blessing twice is a no-op) so that its renames are done before the poweroff
good() {
	systemctl start mkma-boot-good.service >/dev/null 2>&1 && r boot-good done || r boot-good "$(systemctl is-enabled mkma-boot-good.service 2>&1)"
}
`;

interface Row {
  id: string;
  message: string;
  state: string;
  left: number;
  done: number;
  boot: string;
}

/** The `layers TAG` lines of a boot's log. */
function layersOf(log: string, tag: string): Row[] {
  return [...log.matchAll(/MKMA-TEST-OUT: layer\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|(\d+)\|(\d+)\|(.*)$/gm)]
    .filter((m) => m[1] === tag)
    .map((m) => ({ id: m[2], message: m[3], state: m[4], left: Number(m[5]), done: Number(m[6]), boot: m[7].trim() }));
}

const checks = (log: string) =>
  Object.fromEntries([...log.matchAll(/MKMA-TEST-OUT: check ([^:]+): (.*)$/gm)].map((m) => [m[1], m[2].trim()]));
const byMessage = (rows: Row[], message: string) => rows.find((r) => r.message === message);

function linkImage(): void {
  fs.mkdirSync(OUT, { recursive: true });
  for (const f of [KERNEL_NAME, INITRAMFS_NAME, BASE_NAME, BUILD_INFO_NAME]) {
    fs.rmSync(path.join(OUT, f), { force: true });
    fs.linkSync(path.join(IMAGE_OUT, f), path.join(OUT, f));
  }
}

/** The boot's storage disk mounted on the host: `fn` gets its images directory. */
function onDisk<T>(disk: string, fn: (images: string) => T): T {
  fs.mkdirSync(MNT, { recursive: true });
  execFileSync('mount', ['-o', 'loop', disk, MNT]);
  try {
    return fn(path.join(MNT, IMAGES_PATH));
  } finally {
    execFileSync('umount', [MNT]);
  }
}

const mkma = (args: string[]) => spawnSync(process.execPath, [MKMA, ...args], { encoding: 'utf8', timeout: 300_000 });

describe('a layer’s life in real boots', () => {
  const times: string[] = [];

  async function boot(name: string, script: string | null, append = ''): Promise<SmokeResult> {
    let testDataDir: string | undefined;
    if (script !== null) {
      testDataDir = path.join(DIR, name);
      fs.mkdirSync(testDataDir, { recursive: true });
      fs.writeFileSync(path.join(testDataDir, 'run.sh'), PRELUDE + script);
    }
    const r = await smokeBoot({
      out: OUT,
      reporter: createReporter({ quiet: true }),
      env: { MKMA_QEMU_ACCEL: 'tcg' },
      timeoutSec: 540,
      fresh: name === 'boot1',
      testDataDir,
      append,
      logPath: path.join(DIR, `${name}.log`),
    });
    const verified = /phase layers-verified (.*)$/m.exec(r.log)?.[1];
    process.stderr.write(`\n${name}:\n${describeSmoke(r)}\n${verified ? `verify: ${verified}\n` : ''}`);
    times.push(`${name} ${r.durationSec.toFixed(1)} s${verified ? ` (verify: ${verified.replace(/ \(.*$/, '')})` : ''}`);
    expect(r.ok).toBe(true);
    return r;
  }

  test('persist twice, reboot, mkma_layers=1, rollback, chroot; a layer that breaks the boot; a damaged layer', async () => {
    fs.rmSync(DIR, { recursive: true, force: true });
    linkImage();

    // 1. A, then B in the same boot
    const b1 = await boot(
      'boot1',
      String.raw`
mkdir -p /srv/life
echo A >/srv/life/a
mkma persist --yes --message A >/dev/null 2>&1; r persist-a $?
echo B >/srv/life/b
mkma persist --yes --message B >/dev/null 2>&1; r persist-b $?
layers saved
`,
    );
    expect(checks(b1.log)).toMatchObject({ 'persist-a': '0', 'persist-b': '0' });
    const saved = layersOf(b1.log, 'saved');
    expect(saved.map((l) => [l.message, l.state, l.left, l.done])).toEqual([
      ['A', 'trial', 3, 0],
      ['B', 'trial', 3, 0],
    ]);
    const [A, B] = saved.map((l) => l.id);
    const disk = b1.diskPath;
    // B's layer holds only B: the second persist of a boot offers what changed since the first
    onDisk(disk, (images) => {
      const bFile = fs.readdirSync(images).find((n) => new RegExp(`^${layerInAnyState(`persistence.${B}.cpio.zst`)}$`).test(n))!;
      const names = execFileSync('sh', ['-c', `zstd -dc "$1" | cpio -it --quiet`, 'sh', path.join(images, bFile)], { encoding: 'utf8' });
      expect(names.split('\n')).toContain('srv/life/b');
      expect(names.split('\n')).not.toContain('srv/life/a');
    });

    // 2. both there, one try each, and marked good
    const b2 = await boot('boot2', `good\nr a "$(cat /srv/life/a)"\nr b "$(cat /srv/life/b)"\nlayers blessed\n`);
    expect(b2.log).toMatch(new RegExp(`layer ${A} on trial: try 1 of 3`));
    expect(b2.log).toMatch(new RegExp(`layer ${B} on trial: try 1 of 3`));
    expect(checks(b2.log)).toMatchObject({ 'boot-good': 'done', a: 'A', b: 'B' });
    expect(layersOf(b2.log, 'blessed').map((l) => [l.id, l.state, l.boot])).toEqual([
      [A, 'active', 'applied'],
      [B, 'active', 'applied'],
    ]);

    // 3. mkma_layers=1: only A; then roll back to it in the guest
    const b3 = await boot(
      'boot3',
      String.raw`
r a "$(cat /srv/life/a)"
r b "$(cat /srv/life/b 2>/dev/null || echo gone)"
layers first
mkma layers rollback >/dev/null 2>&1; r rollback $?
layers rolled
`,
      'mkma_layers=1',
    );
    expect(checks(b3.log)).toMatchObject({ a: 'A', b: 'gone', rollback: '0' });
    expect(byMessage(layersOf(b3.log, 'first'), 'B')?.boot).toBe('beyond mkma_layers=1');
    expect(byMessage(layersOf(b3.log, 'rolled'), 'B')?.state).toBe('disabled');

    // on the host: a change to the images without booting them
    const chroot = onDisk(disk, (images) => mkma(['chroot', '--path', images, '--yes', '--quiet', '--', 'useradd', 'alice']));
    if (chroot.status !== 0) process.stderr.write(`mkma chroot: ${chroot.stderr}\n`);
    expect(chroot.status).toBe(0);

    // 4. only A, and alice; then C breaks what marks a boot good (masks the unit) and is saved
    const b4 = await boot(
      'boot4',
      String.raw`
good
r a "$(cat /srv/life/a)"
r b "$(cat /srv/life/b 2>/dev/null || echo gone)"
r alice "$(id -u alice >/dev/null 2>&1 && echo exists || echo missing)"
systemctl mask mkma-boot-good.service >/dev/null 2>&1; r mask $?
mkma persist --yes --message C >/dev/null 2>&1; r persist-c $?
layers four
`,
    );
    expect(checks(b4.log)).toMatchObject({ 'boot-good': 'done', a: 'A', b: 'gone', alice: 'exists', mask: '0', 'persist-c': '0' });
    const four = layersOf(b4.log, 'four');
    const alice = four.find((l) => l.message.includes('useradd alice'))!;
    expect(alice).toMatchObject({ state: 'active', boot: 'applied' });
    const C = byMessage(four, 'C')!.id;

    // on the host: D, a copy of A with one byte of its data flipped
    const D = '20991231T000000Z';
    const verify = onDisk(disk, (images) => {
      const aFile = path.join(images, `persistence.${A}.cpio.zst`);
      const bytes = fs.readFileSync(aFile);
      bytes[readManifest(aFile).dataBytes >> 1] ^= 0x01;
      fs.writeFileSync(path.join(images, `persistence.${D}.cpio.zst`), bytes, { mode: 0o600 });
      return mkma(['verify', '--path', images]);
    });
    expect(verify.status).toBe(1);
    expect(verify.stdout).toMatch(new RegExp(`^DAMAGED  persistence\\.${D}\\.cpio\\.zst  `, 'm'));
    expect(verify.stdout).toMatch(new RegExp(`^1 of \\d+ image\\(s\\) damaged: persistence\\.${D}\\.cpio\\.zst$`, 'm'));

    // 5-7. C on trial, never marked good; D skipped by name, every boot
    const b5 = await boot('boot5', `good\nr a "$(cat /srv/life/a)"\nlayers five\n`, 'mkma_verify=1');
    expect(b5.log).toMatch(new RegExp(`layer ${C} on trial: try 1 of 3`));
    expect(b5.log).toMatch(new RegExp(`LAYER SKIPPED persistence\\.${D}\\.cpio\\.zst: damaged: its data does not match the data_sha256`));
    expect(checks(b5.log)).toMatchObject({ 'boot-good': 'masked', a: 'A' });
    const five = layersOf(b5.log, 'five');
    expect(five.find((l) => l.id === D)?.boot).toMatch(/^damaged: /);
    expect(five.find((l) => l.id === C)).toMatchObject({ state: 'trial', left: 2, done: 1, boot: 'applied' });
    const b6 = await boot('boot6', null);
    expect(b6.log).toMatch(new RegExp(`layer ${C} on trial: try 2 of 3`));
    const b7 = await boot('boot7', null);
    expect(b7.log).toMatch(new RegExp(`layer ${C} on trial: try 3 of 3`));

    // 8. C failed: skipped, said so; the boot reaches multi-user and is marked good again
    const b8 = await boot('boot8', `good\nr alice "$(id -u alice >/dev/null 2>&1 && echo exists || echo missing)"\nlayers eight\n`);
    expect(b8.log).toMatch(new RegExp(`LAYER FAILED ${C}: no boot with it was marked good in 3 tries`));
    expect(b8.log).not.toMatch(new RegExp(`phase layer-applied ${layerInAnyState(`persistence.${C}.cpio.zst`)}`));
    expect(checks(b8.log)).toMatchObject({ 'boot-good': 'done', alice: 'exists' });
    const eight = layersOf(b8.log, 'eight');
    expect(eight.find((l) => l.id === C)).toMatchObject({ state: 'failed', done: 3, boot: 'failed (3 tries)' });
    expect(eight.find((l) => l.id === A)).toMatchObject({ state: 'active', boot: 'applied' });

    process.stderr.write(`\nlifecycle boots (TCG): ${times.join(', ')}\n`);
  }, 2_400_000);
});
