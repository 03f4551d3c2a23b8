// Real tools: mke2fs/debugfs disks, QEMU runs (a fake emulator for the console logic, and a
// real TCG boot of a tiny busybox initramfs with a Debian kernel fetched through apt).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeImagesDisk, makeDataDisk, listDiskFiles, readDiskFile, DiskError } from '../../qemu/disk.js';
import { bootQemu, phaseTimings, formatTimings, qemuArgs, MULTI_USER_MARKER, type BootOptions } from '../../qemu/run.js';
import { ensureTestKernel } from '../helpers/kernel.js';
import { REPO, WORK } from '../helpers/paths.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const KERNEL_CACHE = path.join(WORK, 'kernel');
const BOOT_TIMEOUT_SEC = 120;

let work: string;
beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-qemu-'));
});
afterAll(() => {
  fs.rmSync(work, { recursive: true, force: true });
});

const read = (p: string) => fs.readFileSync(p);
async function diskFile(disk: string, p: string): Promise<Buffer> {
  const dest = path.join(work, `out-${crypto.randomUUID()}`);
  await readDiskFile(disk, p, dest);
  return read(dest);
}
/** debugfs -w write: stands in for a guest saving a layer onto its storage disk */
function guestWrites(disk: string, src: string, dest: string): void {
  const r = spawnSync('debugfs', ['-w', '-R', `write ${src} ${dest}`, disk], { encoding: 'utf8' });
  expect(r.stderr.replace(/^debugfs \d.*\n/m, '').trim()).toBe('');
}
function superblock(disk: string): string {
  return execFileSync('dumpe2fs', ['-h', disk], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

describe('images disk (mke2fs -d, debugfs)', () => {
  let images: string;
  let disk: string;
  const base1 = crypto.randomBytes(300_000);
  const base2 = crypto.randomBytes(200_000);
  const layer = Buffer.from('a layer the guest saved\n');

  beforeAll(() => {
    images = path.join(work, 'out');
    fs.mkdirSync(images);
    disk = path.join(work, 'disks/storage.img');
  });

  test('a fresh disk holds the images under /mkma, with label and UUID', async () => {
    fs.writeFileSync(path.join(images, 'base.cpio.zst'), base1);
    fs.writeFileSync(path.join(images, 'mkma.json'), '{}');
    const uuid = '3f1c1d2e-5b6a-4c7d-8e9f-0a1b2c3d4e5f';
    const r = await makeImagesDisk({ diskPath: disk, imagesDir: images, label: 'MKMA', uuid, fresh: true, files: ['base.cpio.zst'] });
    expect(r).toEqual({ created: true, carried: [], sizeBytes: 65 * 1024 * 1024 });
    expect(fs.statSync(disk).size).toBe(r.sizeBytes);
    expect(await listDiskFiles(disk, '/mkma')).toEqual(['base.cpio.zst']);
    expect(await diskFile(disk, '/mkma/base.cpio.zst')).toEqual(base1);
    const sb = superblock(disk);
    expect(sb).toMatch(/Filesystem volume name:\s+MKMA\n/);
    expect(sb).toMatch(new RegExp(`Filesystem UUID:\\s+${uuid}`));
    expect(fs.readdirSync(path.dirname(disk))).toEqual(['storage.img']); // no staging or temp left
  });

  test('a rebuild keeps the layers the guest wrote and takes the new base', async () => {
    const src = path.join(work, 'layer');
    fs.writeFileSync(src, layer);
    guestWrites(disk, src, '/mkma/persistence.x.cpio.zst');
    guestWrites(disk, src, '/mkma/unrelated.txt');
    expect(await listDiskFiles(disk, '/mkma')).toEqual(['base.cpio.zst', 'persistence.x.cpio.zst', 'unrelated.txt']);

    fs.writeFileSync(path.join(images, 'base.cpio.zst'), base2);
    const r = await makeImagesDisk({ diskPath: disk, imagesDir: images, label: 'MKMA', fresh: false, files: ['base.cpio.zst'] });
    expect(r.created).toBe(false);
    expect(r.carried).toEqual(['persistence.x.cpio.zst']);
    expect(await listDiskFiles(disk, '/mkma')).toEqual(['base.cpio.zst', 'persistence.x.cpio.zst']);
    expect(await diskFile(disk, '/mkma/base.cpio.zst')).toEqual(base2);
    expect(await diskFile(disk, '/mkma/persistence.x.cpio.zst')).toEqual(layer);
  });

  test('fresh drops the layers; a custom images path and size are honoured', async () => {
    const r = await makeImagesDisk({
      diskPath: disk,
      imagesDir: images,
      label: 'MKMA',
      fresh: true,
      files: ['base.cpio.zst', 'mkma.json'],
      imagesPath: '/boot/mkma/',
      sizeBytes: 80 * 1024 * 1024,
    });
    expect(r).toEqual({ created: true, carried: [], sizeBytes: 80 * 1024 * 1024 });
    expect(fs.statSync(disk).size).toBe(80 * 1024 * 1024);
    expect(await listDiskFiles(disk, '/boot/mkma')).toEqual(['base.cpio.zst', 'mkma.json']);
    await expect(listDiskFiles(disk, '/mkma')).rejects.toThrow(/File not found/);
  });

  test('an unreadable old disk is not silently replaced', async () => {
    const junk = path.join(work, 'junk.img');
    fs.writeFileSync(junk, crypto.randomBytes(65536));
    const before = read(junk);
    await expect(
      makeImagesDisk({ diskPath: junk, imagesDir: images, label: 'MKMA', fresh: false, files: ['base.cpio.zst'] }),
    ).rejects.toThrow(/cannot read the layers of the existing disk .*fresh/);
    expect(read(junk)).toEqual(before);
    await expect(
      makeImagesDisk({ diskPath: junk, imagesDir: images, label: 'MKMA', fresh: false, files: ['nope.cpio.zst'] }),
    ).rejects.toThrow(DiskError);
  });

  test('readDiskFile of a missing file fails', async () => {
    await expect(readDiskFile(disk, '/boot/mkma/none', path.join(work, 'none'))).rejects.toThrow(/File not found/);
  });
});

test('makeDataDisk copies a directory tree', async () => {
  const dir = path.join(work, 'data');
  fs.mkdirSync(path.join(dir, 'sub dir'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'run.sh'), 'echo hi\n', { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'sub dir/x'), 'x');
  const disk = path.join(work, 'data.img');
  await makeDataDisk(dir, disk, 'MKMA-TEST');
  expect(superblock(disk)).toMatch(/Filesystem volume name:\s+MKMA-TEST\n/);
  expect(await listDiskFiles(disk, '/')).toEqual(['lost+found', 'run.sh', 'sub dir']);
  expect(String(await diskFile(disk, '/sub dir/x'))).toBe('x');
  expect(String(await diskFile(disk, '/run.sh'))).toBe('echo hi\n');
});

// --- console handling, with a shell script standing in for QEMU ----------------------------

describe('bootQemu console logic (fake emulator)', () => {
  let kernel: string;
  let n = 0;
  beforeAll(() => {
    kernel = path.join(work, 'fake-kernel');
    fs.writeFileSync(kernel, '');
  });

  /** A fake qemu-system: prints `body`'s output; `exec sleep` so a kill hits the sleeper itself. */
  function fake(body: string): { opts: BootOptions; pidFile: string } {
    const dir = path.join(work, `fake${n++}`);
    fs.mkdirSync(dir);
    const pidFile = path.join(dir, 'pid');
    const bin = path.join(dir, 'qemu');
    fs.writeFileSync(bin, `#!/bin/sh\necho $$ > ${pidFile}\n${body}\n`, { mode: 0o755 });
    return {
      pidFile,
      opts: {
        qemuBinary: bin,
        kernel,
        initrd: kernel,
        disks: [],
        append: '',
        memoryMiB: 256,
        cpus: 1,
        accel: 'tcg',
        timeoutSec: 20,
        logPath: path.join(dir, 'console.log'),
        interactive: false,
        successMarker: MULTI_USER_MARKER,
      },
    };
  }
  const alive = (pidFile: string) => {
    try {
      process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 0);
      return true;
    } catch {
      return false;
    }
  };

  test('success marker: ok at once, emulator killed, log written without CR', async () => {
    const { opts, pidFile } = fake(
      `printf 'booting\\r\\nmkma[1.50]: phase start x\\r\\n${MULTI_USER_MARKER} uptime=2.5\\r\\n'\nexec sleep 30`,
    );
    const lines: string[] = [];
    const r = await bootQemu({ ...opts, onLine: (l) => lines.push(l) });
    expect(r).toMatchObject({ ok: true, timedOut: false, exitCode: null });
    expect(r.durationSec).toBeLessThan(10);
    expect(lines).toEqual(['booting', 'mkma[1.50]: phase start x', `${MULTI_USER_MARKER} uptime=2.5`]);
    expect(fs.readFileSync(opts.logPath, 'utf8')).toBe(lines.join('\n') + '\n');
    expect(phaseTimings(r.log)).toMatchObject({ kernelToInit: 1.5, multiUser: 2.5 });
    expect(alive(pidFile)).toBe(false);
  });

  test('waitForPoweroff: ok only when the emulator exits after the marker', async () => {
    const { opts } = fake(`echo '${MULTI_USER_MARKER} uptime=1'\nsleep 1\necho 'reboot: Power down'`);
    const r = await bootQemu({ ...opts, waitForPoweroff: true });
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    expect(r.log).toMatch(/Power down$/);
  });

  test('failure marker: not ok, lines after it kept for the grace period', async () => {
    const { opts, pidFile } = fake(`echo 'mkma[3.20]: FATAL no base image'\necho 'mkma[3.21]: hint: check it'\nexec sleep 30`);
    const r = await bootQemu({ ...opts, failureGraceMs: 500 });
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/failure marker .*FATAL no base image/);
    expect(r.log).toContain('hint: check it');
    expect(alive(pidFile)).toBe(false);
  });

  test("exit without the marker: not ok, with QEMU's stderr in the reason", async () => {
    const { opts } = fake(`echo 'qemu-system-x86_64: -drive file=x: Could not open' >&2\nexit 1`);
    const r = await bootQemu(opts);
    expect(r).toMatchObject({ ok: false, exitCode: 1, timedOut: false });
    expect(r.reason).toMatch(/QEMU exited with 1 before "MKMA-TEST: multi-user reached".*Could not open/);
    expect(fs.readFileSync(opts.logPath, 'utf8')).toContain('[qemu stderr] qemu-system-x86_64: -drive');
  });

  test('timeout: killed, says so and where the log is', async () => {
    const { opts, pidFile } = fake('echo starting\nexec sleep 60');
    const r = await bootQemu({ ...opts, timeoutSec: 1 });
    expect(r).toMatchObject({ ok: false, timedOut: true });
    expect(r.reason).toBe(`timed out after 1s (log: ${opts.logPath})`);
    expect(alive(pidFile)).toBe(false);
  });

  test('mkma ended by a signal mid-boot takes the emulator with it, then dies of the signal', async () => {
    const { opts, pidFile } = fake('exec sleep 60');
    const script = `import { bootQemu } from ${JSON.stringify(path.join(REPO, 'dist/qemu/run.js'))};
      await bootQemu(JSON.parse(process.argv[1]));`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(opts)], { stdio: 'ignore' });
    const ended = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    for (let i = 0; i < 200 && !(fs.existsSync(pidFile) && alive(pidFile)); i++) await sleep(50);
    expect(alive(pidFile)).toBe(true);
    child.kill('SIGTERM');
    expect(await ended).toBe('SIGTERM');
    for (let i = 0; i < 40 && alive(pidFile); i++) await sleep(50); // reaped by init
    expect(alive(pidFile)).toBe(false);
  });

  test('abort: the emulator is killed at once (a power cut), mid-output', async () => {
    const { opts, pidFile } = fake('i=0; while :; do echo "line $i"; i=$((i+1)); sleep 0.05; done');
    const ac = new AbortController();
    const r = await bootQemu({
      ...opts,
      signal: ac.signal,
      onLine: (l) => {
        if (l === 'line 3') ac.abort();
      },
    });
    expect(r).toMatchObject({ ok: false, timedOut: false, exitCode: null });
    expect(r.reason).toMatch(/^killed on request after [\d.]+s/);
    expect(r.log).toMatch(/^line 0\nline 1\nline 2\nline 3/);
    expect(alive(pidFile)).toBe(false);
  });

  test('missing inputs and emulator are clear errors', async () => {
    const { opts } = fake('true');
    await expect(bootQemu({ ...opts, kernel: '/nonexistent/vmlinuz' })).rejects.toThrow(/kernel \/nonexistent\/vmlinuz does not exist/);
    await expect(bootQemu({ ...opts, qemuBinary: '/nonexistent/qemu' })).rejects.toThrow(
      /\/nonexistent\/qemu not found \(apt-get install qemu-system\)/,
    );
    await expect(bootQemu({ ...opts, timeoutSec: 0 })).rejects.toThrow(/timeoutSec/);
  });
});

// --- a real boot ----------------------------------------------------------------------------

const TINY_INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys
mount -t proc proc /proc
mount -t sysfs sysfs /sys
read -r up _ </proc/uptime
echo "mkma[$up]: phase start tiny init"
# virtio-blk PCI functions (vendor 0x1af4, device 0x1001): the -drive options made devices
echo "virtio-blk: $(grep -l 0x1001 /sys/bus/pci/devices/*/device | wc -l)"
case $(cat /proc/cmdline) in
*tiny_panic*) echo "exiting init on purpose"; exit 1 ;;
esac
read -r up _ </proc/uptime
echo "${MULTI_USER_MARKER} uptime=$up"
poweroff -f
`;

function tinyInitramfs(dir: string): string {
  const root = path.join(dir, 'root');
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => fs.existsSync(p));
  if (!busybox) throw new Error('no /bin/busybox: apt-get install busybox-static');
  fs.copyFileSync(busybox, path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  fs.writeFileSync(path.join(root, 'init'), TINY_INIT, { mode: 0o755 });
  const out = path.join(dir, 'initramfs.cpio.zst');
  execFileSync('sh', ['-c', 'cd "$1" && find . | cpio -o -H newc -R 0:0 --quiet | zstd -q -3 > "$2"', 'sh', root, out]);
  return out;
}

describe('real QEMU boot (TCG)', () => {
  let kernel: string;
  let initrd: string;
  let disks: BootOptions['disks'];

  beforeAll(async () => {
    kernel = await ensureTestKernel(KERNEL_CACHE);
    const dir = path.join(work, 'tiny');
    fs.mkdirSync(dir);
    initrd = tinyInitramfs(dir);
    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(path.join(data, 'run.sh'), 'echo hi\n');
    await makeDataDisk(data, path.join(dir, 'data.img'), 'MKMA-TEST');
    const images = path.join(dir, 'out');
    fs.mkdirSync(images);
    fs.writeFileSync(path.join(images, 'base.cpio.zst'), 'not a real base');
    await makeImagesDisk({
      diskPath: path.join(dir, 'storage.img'),
      imagesDir: images,
      label: 'MKMA',
      fresh: true,
      files: ['base.cpio.zst'],
    });
    disks = [{ path: path.join(dir, 'storage.img') }, { path: path.join(dir, 'data.img'), readonly: true }];
  }, 300_000);

  const boot = (append: string, logName: string): BootOptions => ({
    kernel,
    initrd,
    disks,
    append,
    memoryMiB: 256,
    cpus: 2,
    accel: 'tcg',
    timeoutSec: BOOT_TIMEOUT_SEC,
    logPath: path.join(work, 'tiny', logName),
    interactive: false,
    successMarker: MULTI_USER_MARKER,
  });
  /** true if a QEMU with this log's initrd is still running */
  const qemuLeft = () => spawnSync('pgrep', ['-f', initrd]).status === 0;

  test('ensureTestKernel returns a cached bzImage', async () => {
    expect(await ensureTestKernel(KERNEL_CACHE)).toBe(kernel);
    expect(read(kernel).subarray(0x202, 0x206).toString()).toBe('HdrS'); // x86 boot protocol magic
  });

  test(
    'boots to the marker and powers off',
    async () => {
      const opts = { ...boot('quiet', 'boot.log'), waitForPoweroff: true };
      const r = await bootQemu(opts);
      const t = phaseTimings(r.log);
      console.log(
        `tiny boot under TCG: ${r.durationSec.toFixed(1)}s wall, ${r.reason}\n` +
          `qemu-system-x86_64 ${qemuArgs(opts).join(' ')}\n${formatTimings(t)}`,
      );
      expect(r.reason).toMatch(/powered off/);
      expect(r).toMatchObject({ ok: true, exitCode: 0, timedOut: false });
      expect(r.log).toContain('virtio-blk: 2');
      expect(t.kernelToInit).toBeGreaterThan(0);
      expect(t.multiUser).toBeGreaterThanOrEqual(t.kernelToInit!);
      expect(qemuLeft()).toBe(false);
    },
    (BOOT_TIMEOUT_SEC + 30) * 1000,
  );

  test(
    'a kernel panic is a failure, reported quickly',
    async () => {
      const r = await bootQemu({ ...boot('quiet tiny_panic', 'panic.log'), failureGraceMs: 1000 });
      expect(r.ok).toBe(false);
      expect(r.timedOut).toBe(false);
      expect(r.reason).toMatch(/Kernel panic - not syncing: Attempted to kill init/);
      expect(r.log).toContain('exiting init on purpose');
      expect(qemuLeft()).toBe(false);
    },
    (BOOT_TIMEOUT_SEC + 30) * 1000,
  );
});
