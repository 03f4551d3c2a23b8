// Issue 16 on a real boot: an arm64 image built on this amd64 host (mmdebstrap through
// qemu-user and binfmt_misc, mkma-unpack cross-compiled), booted in qemu-system-aarch64 under
// TCG to multi-user, a change saved with `mkma persist --yes` by the arm64 Node.js in the guest,
// and seen again after a reboot. Its own image (test/fixtures/test-image-arm64.toml): the
// amd64 one of global-setup.ts cannot serve. The time split (bootstrap, pack, each boot) goes
// to stderr and to .test-work/arm64/times.json. Then `mkma install` puts the image on a stick
// (GRUB arm64-efi at /EFI/BOOT/BOOTAA64.EFI) and AAVMF boots it on virt: issue 16's UEFI stick.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { listDiskFiles } from '../../qemu/disk.js';
import { bootInstalledDisk } from '../../qemu/installed.js';
import { describeSmoke, IMAGES_PATH, smokeBoot } from '../../qemu/smoke.js';
import { MKMA, REPO, WORK } from '../helpers/paths.js';
import { layerInAnyState } from '../helpers/layer-names.js';

const CONFIG = path.join(REPO, 'test/fixtures/test-image-arm64.toml');
const DIR = path.join(WORK, 'arm64');
const OUT = path.join(DIR, 'image');

const CHANGES = String.raw`
set -u
echo "arch: $(uname -m)"
echo "scan helper: $(/usr/lib/mkma/mkma-scan -h 2>&1 | head -n 1)"
mkdir -p /srv/arm64 && echo saved-on-arm64 >/srv/arm64/created
echo modified-on-arm64 >>/etc/motd
t0=$(cut -d' ' -f1 /proc/uptime)
mkma persist --yes --message "arm64 e2e" 2>&1
echo "persist exit: $?"
echo "persist took: $t0 -> $(cut -d' ' -f1 /proc/uptime)"
`;

/** The UEFI boot of the installed stick (AAVMF, GRUB arm64-efi). */
const UEFI_CHECK = String.raw`
echo "firmware: $(test -d /sys/firmware/efi && echo UEFI || echo none) on $(uname -m)"
`;

const CHECKS = String.raw`
echo "check created: $(cat /srv/arm64/created)"
echo "check motd: $(tail -n 1 /etc/motd)"
`;

/** "<stage> done in N s" from mkma build's progress (lib/progress.ts). */
function stageSeconds(stderr: string): Record<string, number> {
  return Object.fromEntries([...stderr.matchAll(/^\s*(.+?) done in ([\d.]+) s/gm)].map((m) => [m[1].trim(), Number(m[2])]));
}

/** The background build's directory (test/e2e/global-setup.ts starts it, arm64-background.mjs runs it). */
const BACKGROUND = path.join(DIR, 'background');

interface BuildState {
  status: 'running' | 'done' | 'failed';
  pid: number;
  started: string;
  seconds: number;
  reason?: string;
}

const readState = (): BuildState | null => {
  try {
    return JSON.parse(fs.readFileSync(path.join(BACKGROUND, 'state.json'), 'utf8')) as BuildState;
  } catch {
    return null;
  }
};

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The last lines of the build's progress, for a failure's message. */
const tail = (file: string): string => {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '(no log)';
  return text.split('\n').slice(-40).join('\n');
};

/**
 * The build's progress (stderr) and wall time: the background build's when global-setup
 * started one (waited for, never longer than its own time limit plus a minute: the runner ends
 * a hung build itself, and a runner that died is noticed), else a build here, in the foreground.
 */
async function arm64Build(): Promise<{ stderr: string; seconds: number; waitedSec?: number }> {
  const first = readState();
  if (!first) {
    const t0 = Date.now();
    const b = spawnSync('node', [MKMA, 'build', '--config', CONFIG, '--out', OUT], {
      encoding: 'utf8',
      env: { ...process.env, MKMA_QEMU_TEST: '' },
      maxBuffer: 64 << 20,
    });
    fs.writeFileSync(path.join(DIR, 'build.log'), b.stdout + b.stderr);
    if (b.status !== 0) throw new Error(`mkma build of the arm64 image failed (exit ${b.status}):\n${b.stderr.slice(-3000)}`);
    return { stderr: b.stderr, seconds: (Date.now() - t0) / 1000 };
  }
  const log = path.join(BACKGROUND, 'build.log');
  const limitSec = Number(process.env.MKMA_ARM64_BUILD_TIMEOUT_SEC ?? 1500) + 60;
  const t0 = Date.now();
  for (;;) {
    const st = readState();
    if (st?.status === 'done') return { stderr: fs.readFileSync(log, 'utf8'), seconds: st.seconds, waitedSec: (Date.now() - t0) / 1000 };
    if (st?.status === 'failed')
      throw new Error(`the background build of the arm64 image failed (${st.reason}); ${log} ends:\n${tail(log)}`);
    if (!st || !alive(st.pid))
      throw new Error(`the background build of the arm64 image ended without a result (runner gone); ${log} ends:\n${tail(log)}`);
    if (Date.now() - Date.parse(st.started) > limitSec * 1000)
      throw new Error(`the background build of the arm64 image is still running after ${limitSec} s; ${log} ends:\n${tail(log)}`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

describe('arm64 on an amd64 host', () => {
  test('build, boot to multi-user with mkma-unpack, persist in the guest, reboot and see it', async () => {
    fs.mkdirSync(DIR, { recursive: true });
    const t0 = Date.now();
    const b = await arm64Build();
    const times: Record<string, number> = { build: b.seconds, ...stageSeconds(b.stderr) };
    if (b.waitedSec !== undefined) times.waitedForBackgroundBuild = b.waitedSec;
    // the fallback would be allowed for users; here the cross build must work (.ci/run installs it)
    expect(b.stderr).toMatch(/initramfs done in .*, mkma-unpack$/m);
    expect(b.stderr).not.toMatch(/mkma-unpack not built/);
    // mkma-scan cross-built for the image's aarch64 node (builder/scan-helper.ts)
    expect(b.stderr).not.toMatch(/mkma-scan not installed/);

    for (const [name, script] of [
      ['boot1', CHANGES],
      ['boot2', CHECKS],
      ['uefi', UEFI_CHECK],
    ]) {
      fs.mkdirSync(path.join(DIR, name), { recursive: true });
      fs.writeFileSync(path.join(DIR, name, 'run.sh'), script);
    }
    const common = { out: OUT, reporter: createReporter({ quiet: true }), env: { MKMA_QEMU_ACCEL: 'tcg' } };

    const first = await smokeBoot({ ...common, fresh: true, testDataDir: path.join(DIR, 'boot1'), logPath: path.join(DIR, 'boot1.log') });
    process.stderr.write(`\narm64 first boot:\n${describeSmoke(first)}\n`);
    times.boot1 = first.durationSec;
    expect(first.ok).toBe(true);
    expect(first.log).toMatch(/phase unpack-base .*, with mkma-unpack$/m);
    expect(first.log).toMatch(/MKMA-TEST-OUT: arch: aarch64/);
    expect(first.log).toMatch(/MKMA-TEST-OUT: scan helper: usage: mkma-scan/);
    expect(first.timings.multiUser).toBeDefined();
    expect(first.log).toMatch(/MKMA-TEST-OUT: persist exit: 0/);
    const persistTook = /MKMA-TEST-OUT: persist took: ([\d.]+) -> ([\d.]+)/.exec(first.log);
    if (persistTook) times.persistInGuest = Number(persistTook[2]) - Number(persistTook[1]);
    const layers = (await listDiskFiles(first.diskPath, IMAGES_PATH)).filter((n) => n.startsWith('persistence.'));
    expect(layers).toHaveLength(1);

    const second = await smokeBoot({ ...common, fresh: false, testDataDir: path.join(DIR, 'boot2'), logPath: path.join(DIR, 'boot2.log') });
    process.stderr.write(`\narm64 second boot:\n${describeSmoke(second)}\n`);
    times.boot2 = second.durationSec;
    expect(second.ok).toBe(true);
    // a new layer is on trial: the boot renames it (one try spent) before applying it
    expect(second.log).toMatch(new RegExp(`phase layer-applied ${layerInAnyState(layers[0])}`));
    expect(second.log).toMatch(/MKMA-TEST-OUT: check created: saved-on-arm64/);
    expect(second.log).toMatch(/MKMA-TEST-OUT: check motd: modified-on-arm64/);

    // the stick: mkma install writes GRUB arm64-efi at /EFI/BOOT/BOOTAA64.EFI; AAVMF boots it on virt
    const stick = path.join(DIR, 'stick.img');
    fs.rmSync(stick, { force: true });
    fs.rmSync(`${stick}.efivars.fd`, { force: true });
    const tInstall = Date.now();
    // prettier-ignore
    const install = spawnSync('node', [MKMA, 'install', stick, '--size', '1G', '--esp-size', '128M', '--yes', '--out', OUT,
      '--append', 'console=ttyAMA0 mkma_test', '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
    expect(install.stderr).toBe('');
    expect(install.status).toBe(0);
    times.install = (Date.now() - tInstall) / 1000;
    const uefi = await bootInstalledDisk({
      reporter: common.reporter,
      env: common.env,
      disk: stick,
      uefi: true,
      testDataDir: path.join(DIR, 'uefi'),
      logPath: path.join(DIR, 'uefi.log'),
    });
    process.stderr.write(`\narm64 UEFI boot of the installed stick:\n${describeSmoke(uefi)}\n`);
    times.uefiBoot = uefi.durationSec;
    expect(uefi.ok).toBe(true);
    expect(uefi.log).toMatch(/mkma: loading mkma-test-arm64, generation 1/);
    expect(uefi.log).toMatch(/MKMA-TEST-OUT: firmware: UEFI on aarch64/);
    expect(uefi.log).toMatch(/phase unpack-base base\.g1\.cpio\.zst: .*, with mkma-unpack$/m);

    times.total = (Date.now() - t0) / 1000;
    fs.writeFileSync(path.join(DIR, 'times.json'), JSON.stringify(times, null, 2) + '\n');
    process.stderr.write(`\narm64 e2e times (s): ${JSON.stringify(times)}\n`);
  }, 3_600_000);
});
