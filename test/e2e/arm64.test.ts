// Issue 16 on a real boot: an arm64 image built on this amd64 host (mmdebstrap through
// qemu-user and binfmt_misc, mkma-unpack cross-compiled), booted in qemu-system-aarch64 under
// TCG to multi-user, a change saved with `mkma persist --yes` by the arm64 Node.js in the guest,
// and seen again after a reboot. Its own image (test/fixtures/test-image-arm64.toml): the
// amd64 one of global-setup.ts cannot serve. The time split (bootstrap, pack, each boot) goes
// to stderr and to .test-work/arm64/times.json.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { listDiskFiles } from '../../qemu/disk.js';
import { describeSmoke, IMAGES_PATH, smokeBoot } from '../../qemu/smoke.js';
import { MKMA, REPO, WORK } from '../helpers/paths.js';

const CONFIG = path.join(REPO, 'test/fixtures/test-image-arm64.toml');
const DIR = path.join(WORK, 'arm64');
const OUT = path.join(DIR, 'image');

const CHANGES = String.raw`
set -u
echo "arch: $(uname -m)"
mkdir -p /srv/arm64 && echo saved-on-arm64 >/srv/arm64/created
echo modified-on-arm64 >>/etc/motd
t0=$(cut -d' ' -f1 /proc/uptime)
mkma persist --yes --message "arm64 e2e" 2>&1
echo "persist exit: $?"
echo "persist took: $t0 -> $(cut -d' ' -f1 /proc/uptime)"
`;

const CHECKS = String.raw`
echo "check created: $(cat /srv/arm64/created)"
echo "check motd: $(tail -n 1 /etc/motd)"
`;

/** "<stage> done in N s" from mkma build's progress (lib/progress.ts). */
function stageSeconds(stderr: string): Record<string, number> {
  return Object.fromEntries([...stderr.matchAll(/^\s*(.+?) done in ([\d.]+) s/gm)].map((m) => [m[1].trim(), Number(m[2])]));
}

describe('arm64 on an amd64 host', () => {
  test('build, boot to multi-user with mkma-unpack, persist in the guest, reboot and see it', async () => {
    fs.mkdirSync(DIR, { recursive: true });
    const t0 = Date.now();
    const b = spawnSync('node', [MKMA, 'build', '--config', CONFIG, '--out', OUT], {
      encoding: 'utf8',
      env: { ...process.env, MKMA_QEMU_TEST: '' },
      maxBuffer: 64 << 20,
    });
    fs.writeFileSync(path.join(DIR, 'build.log'), b.stdout + b.stderr);
    if (b.status !== 0) throw new Error(`mkma build of the arm64 image failed (exit ${b.status}):\n${b.stderr.slice(-3000)}`);
    const times: Record<string, number> = { build: (Date.now() - t0) / 1000, ...stageSeconds(b.stderr) };
    // the fallback would be allowed for users; here the cross build must work (.ci/run installs it)
    expect(b.stderr).toMatch(/initramfs done in .*, mkma-unpack$/m);
    expect(b.stderr).not.toMatch(/mkma-unpack not built/);

    for (const [name, script] of [
      ['boot1', CHANGES],
      ['boot2', CHECKS],
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
    expect(second.log).toMatch(new RegExp(`phase layer-applied ${layers[0].replace(/\./g, '\\.')}`));
    expect(second.log).toMatch(/MKMA-TEST-OUT: check created: saved-on-arm64/);
    expect(second.log).toMatch(/MKMA-TEST-OUT: check motd: modified-on-arm64/);

    times.total = (Date.now() - t0) / 1000;
    fs.writeFileSync(path.join(DIR, 'times.json'), JSON.stringify(times, null, 2) + '\n');
    process.stderr.write(`\narm64 e2e times (s): ${JSON.stringify(times)}\n`);
  }, 3_600_000);
});
