import { describe, expect, test } from '@jest/globals';
import { pickAccel, AccelError, KVM_DEVICE, type AccelProbe } from '../../qemu/accel.js';
import {
  qemuArgs,
  cleanConsoleLine,
  phaseTimings,
  formatTimings,
  phaseLine,
  matchesMarker,
  FAILURE_MARKERS,
  MULTI_USER_MARKER,
  PHASE_LINE_RE,
  escapeOptionValue,
  emulatorFault,
  QemuError,
  type QemuArgsOptions,
} from '../../qemu/run.js';
import { imagesDiskSize, contentBytes, mke2fsArgs, isCarriedOver, DiskError, PERSISTENCE_HEADROOM_BYTES } from '../../qemu/disk.js';
import { newestKernelPackage } from '../helpers/kernel.js';

const MiB = 1024 * 1024;

function probe(result: boolean): AccelProbe & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    canOpenReadWrite: (p) => {
      asked.push(p);
      return result;
    },
  };
}

describe('pickAccel', () => {
  test('KVM when /dev/kvm opens read-write, TCG otherwise', () => {
    const yes = probe(true);
    expect(pickAccel({}, yes)).toBe('kvm');
    expect(yes.asked).toEqual([KVM_DEVICE]);
    expect(pickAccel({}, probe(false))).toBe('tcg');
  });

  test('MKMA_QEMU_ACCEL wins both ways, without probing', () => {
    const p = probe(true);
    expect(pickAccel({ MKMA_QEMU_ACCEL: 'tcg' }, p)).toBe('tcg');
    expect(pickAccel({ MKMA_QEMU_ACCEL: 'kvm' }, probe(false))).toBe('kvm');
    expect(p.asked).toEqual([]);
  });

  test('an empty value means unset; anything else is an error naming the variable', () => {
    expect(pickAccel({ MKMA_QEMU_ACCEL: '' }, probe(false))).toBe('tcg');
    expect(() => pickAccel({ MKMA_QEMU_ACCEL: 'hvf' }, probe(true))).toThrow(AccelError);
    expect(() => pickAccel({ MKMA_QEMU_ACCEL: 'KVM' }, probe(true))).toThrow(/MKMA_QEMU_ACCEL must be "kvm" or "tcg", got "KVM"/);
  });
});

const base: QemuArgsOptions = {
  kernel: '/out/vmlinuz',
  initrd: '/out/initramfs.cpio.zst',
  disks: [],
  append: 'mkma_storage_device=LABEL=MKMA mkma_images_path=/mkma quiet',
  memoryMiB: 2048,
  cpus: 2,
  accel: 'tcg',
  interactive: false,
};

/** the value following `flag` (first occurrence) */
const opt = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

describe('qemuArgs', () => {
  test('TCG with 2 vCPUs: multi-threaded TCG, default CPU model, serial on stdout', () => {
    const a = qemuArgs(base);
    expect(opt(a, '-accel')).toBe('tcg,thread=multi');
    expect(a).not.toContain('-cpu');
    expect(opt(a, '-m')).toBe('2048');
    expect(opt(a, '-smp')).toBe('2');
    expect(opt(a, '-machine')).toBe('q35');
    expect(opt(a, '-kernel')).toBe('/out/vmlinuz');
    expect(opt(a, '-initrd')).toBe('/out/initramfs.cpio.zst');
    expect(opt(a, '-serial')).toBe('stdio');
    expect(opt(a, '-monitor')).toBe('none');
    for (const f of ['-nodefaults', '-nographic', '-no-reboot']) expect(a).toContain(f);
    expect(a).not.toContain('-chardev');
  });

  test('one vCPU under TCG needs no thread option; KVM uses the host CPU', () => {
    expect(opt(qemuArgs({ ...base, cpus: 1 }), '-accel')).toBe('tcg');
    const k = qemuArgs({ ...base, accel: 'kvm' });
    expect(opt(k, '-accel')).toBe('kvm');
    expect(opt(k, '-cpu')).toBe('host');
    expect(opt(qemuArgs({ ...base, cpu: 'max' }), '-cpu')).toBe('max');
  });

  test("extra options (a NIC with a host port forward) come after mkma's own", () => {
    const nic = ['-nic', 'user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22'];
    expect(qemuArgs({ ...base, extraArgs: nic }).slice(-4)).toEqual(['-monitor', 'none', ...nic]);
    expect(qemuArgs(base)).not.toContain('-nic');
  });

  test('console=ttyS0 comes last on the kernel command line', () => {
    expect(opt(qemuArgs(base), '-append')).toBe('mkma_storage_device=LABEL=MKMA mkma_images_path=/mkma quiet console=ttyS0');
    expect(opt(qemuArgs({ ...base, append: '' }), '-append')).toBe('console=ttyS0');
  });

  test('disks are raw virtio drives, read-only on request, commas in paths doubled', () => {
    const a = qemuArgs({
      ...base,
      disks: [{ path: '/w/disk.img' }, { path: '/w/a,b.img', readonly: true }, { path: '/w/c.img', cache: 'writeback' }],
    });
    const drives = a.flatMap((x, i) => (x === '-drive' ? [a[i + 1]] : []));
    expect(drives).toEqual([
      'file=/w/disk.img,format=raw,if=virtio',
      'file=/w/a,,b.img,format=raw,if=virtio,readonly=on',
      'file=/w/c.img,format=raw,if=virtio,cache=writeback',
    ]);
    expect(escapeOptionValue('a,,b')).toBe('a,,,,b');
  });

  test('interactive: serial and monitor muxed on stdio, Ctrl-C to the guest, console logged', () => {
    const a = qemuArgs({ ...base, interactive: true, logPath: '/tmp/con,sole.log' });
    expect(opt(a, '-chardev')).toBe('stdio,id=con0,mux=on,signal=off,logfile=/tmp/con,,sole.log');
    expect(opt(a, '-serial')).toBe('chardev:con0');
    expect(opt(a, '-mon')).toBe('chardev=con0');
  });

  test('rejects nonsense sizes', () => {
    expect(() => qemuArgs({ ...base, cpus: 0 })).toThrow(QemuError);
    expect(() => qemuArgs({ ...base, memoryMiB: 1.5 })).toThrow(QemuError);
  });
});

describe('console lines', () => {
  test('terminal control sequences and CR are stripped', () => {
    expect(cleanConsoleLine('\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1.16.2)\r')).toBe('SeaBIOS (version 1.16.2)');
    expect(cleanConsoleLine('\x1b[0m\x1b[32m  OK  \x1b[0m] Reached target')).toBe('  OK  ] Reached target');
  });

  test('default failure markers: kernel panic and the init fatal() line, not a warning', () => {
    const hit = (l: string) => FAILURE_MARKERS.some((m) => matchesMarker(l, m));
    expect(hit('[    3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100')).toBe(true);
    expect(hit('mkma[4.21]: FATAL no base image at LABEL=MKMA:/mkma/base.cpio.zst')).toBe(true);
    expect(hit('mkma: FATAL something')).toBe(true);
    expect(hit('mkma[4.21]: WARNING layer persistence.2.cpio.zst skipped')).toBe(false);
  });
});

// What a TCG boot of a mkma image prints with `quiet` (shortened; the times of a real TCG boot on a 2-core host).
const SAMPLE_LOG = [
  'SeaBIOS (version 1.16.2-debian-1.16.2-1)',
  // the kernel's UART reset ate SeaBIOS's last '.\r\n' (seen in real boots here)
  'Booting from ROM..mkma[4.01]: phase start mkma init',
  'mkma[4.38]: phase modules-loaded',
  'mkma[4.39]: phase device waiting for LABEL=MKMA (up to 30s)',
  'mkma[4.71]: phase device-found /dev/vda',
  'mkma[4.90]: phase unpack-base 64 MiB compressed, 218 MiB unpacked, 10021 entries',
  // the kernel-log copy, as a verbose loglevel would also show it: counted once
  '[    4.900123] mkma[4.90]: phase unpack-base 64 MiB compressed, 218 MiB unpacked, 10021 entries',
  'mkma[39.60]: phase base-unpacked in 34.70 s, 6.3 MB/s',
  'mkma[40.80]: phase layer-applied persistence.20261122T021500Z.cpio.zst (12 entries, 1 removed)',
  'mkma[40.81]: phase layers-done 1 applied, 0 skipped',
  'mkma[41.20]: phase switch-root /sbin/init',
  "[   41.733120] systemd[1]: Inserted module 'autofs4'",
  '[  OK  ] Reached target multi-user.target - Multi-User System.',
  'MKMA-TEST: multi-user reached uptime=63.80',
  'MKMA-TEST: done',
  '[   64.512300] reboot: Power down',
].join('\r\n');

describe('phaseTimings', () => {
  test('reads the init phases, switch_root, the multi-user uptime and the last kernel timestamp', () => {
    const t = phaseTimings(SAMPLE_LOG);
    expect(t.kernelToInit).toBe(4.01);
    expect(t.switchRoot).toBe(41.2);
    expect(t.multiUser).toBe(63.8);
    expect(t.lastKernelTimestamp).toBe(64.5123);
    expect(t.phases.map((p) => p.name)).toEqual([
      'start',
      'modules-loaded',
      'device',
      'device-found',
      'unpack-base',
      'base-unpacked',
      'layer-applied',
      'layers-done',
      'switch-root',
    ]);
    expect(t.phases[4]).toEqual({ name: 'unpack-base', at: 4.9, text: '64 MiB compressed, 218 MiB unpacked, 10021 entries' });
    expect(t.phases[1].text).toBe('');
  });

  test('the format the init prints round-trips, with padded uptimes too', () => {
    expect(PHASE_LINE_RE.exec(phaseLine(12.345, 'device-found', '/dev/vda'))?.slice(1)).toEqual(['12.35', 'device-found', '/dev/vda']);
    expect(PHASE_LINE_RE.exec('mkma[ 12.345]: phase start x y')?.slice(1)).toEqual(['12.345', 'start', 'x y']);
    // the UART reset can eat SeaBIOS's last bytes, gluing the first init line to them
    expect(PHASE_LINE_RE.exec('Booting from ROM..mkma[3.79]: phase start mkma init')?.slice(1)).toEqual(['3.79', 'start', 'mkma init']);
    expect(PHASE_LINE_RE.test('mkma[1.0]: WARNING phase start')).toBe(false);
  });

  test('a boot that never reached the init has only kernel time', () => {
    const t = phaseTimings('[    0.000000] Linux version 6.1\n[    3.100000] Kernel panic - not syncing: VFS');
    expect(t).toEqual({ phases: [], lastKernelTimestamp: 3.1 });
    expect(formatTimings(t)).toBe('no phase lines in the console log');
  });

  test('formatTimings: one row per phase with uptime and delta, multi-user last', () => {
    const table = formatTimings(phaseTimings(SAMPLE_LOG)).split('\n');
    expect(table[0]).toMatch(/^phase\s+at \(s\)\s+delta$/);
    expect(table[1]).toMatch(/^start\s+4\.01\s+\+4\.01\s+mkma init$/);
    expect(table.find((l) => l.startsWith('base-unpacked'))).toMatch(/39\.60\s+\+34\.70\s+in 34\.70 s/);
    expect(table[table.length - 1]).toMatch(/^multi-user\s+63\.80\s+\+22\.60$/);
    expect(table).toHaveLength(11);
  });

  test('MULTI_USER_MARKER is what the guest hook prints', () => {
    expect(SAMPLE_LOG.includes(MULTI_USER_MARKER)).toBe(true);
  });
});

describe('disk sizing and mke2fs arguments', () => {
  test('content + 30% + 64 MiB, whole MiB', () => {
    expect(imagesDiskSize(0)).toBe(PERSISTENCE_HEADROOM_BYTES);
    expect(imagesDiskSize(100 * MiB)).toBe(194 * MiB);
    expect(imagesDiskSize(1)).toBe(65 * MiB);
    expect(imagesDiskSize(10 * MiB, 16 * MiB)).toBe(29 * MiB);
  });

  test('files count in whole 4 KiB blocks plus one for metadata', () => {
    expect(contentBytes([])).toBe(0);
    expect(contentBytes([1, 4096, 4097])).toBe(4096 * 2 + 4096 * 2 + 4096 * 3);
  });

  test('mke2fs populates from a directory, never mounts', () => {
    expect(mke2fsArgs({ file: '/w/d.img', sourceDir: '/w/st', label: 'MKMA', sizeBytes: 70 * MiB })).toEqual([
      '-q',
      '-t',
      'ext4',
      '-b',
      '4096',
      '-m',
      '0',
      '-d',
      '/w/st',
      '-L',
      'MKMA',
      '-F',
      '/w/d.img',
      '71680k',
    ]);
    const u = '0b4f8f1e-64c4-4c5a-9d0e-0d2c7c1a5a11';
    expect(mke2fsArgs({ file: 'f', sourceDir: 'd', label: 'L', uuid: u, sizeBytes: MiB })).toEqual(expect.arrayContaining(['-U', u]));
    expect(() => mke2fsArgs({ file: 'f', sourceDir: 'd', label: 'A-LABEL-THAT-IS-TOO-LONG', sizeBytes: MiB })).toThrow(DiskError);
    expect(() => mke2fsArgs({ file: 'f', sourceDir: 'd', label: 'L', uuid: 'nope', sizeBytes: MiB })).toThrow(/not a UUID/);
  });

  test('a rebuild carries over everything named like a layer', () => {
    expect(isCarriedOver('persistence.20261122T021500Z.cpio.zst')).toBe(true);
    expect(isCarriedOver('persistence.x.cpio.zst')).toBe(true);
    expect(isCarriedOver('persistence..cpio.zst')).toBe(false);
    expect(isCarriedOver('persistence.cpio.zst')).toBe(false);
    expect(isCarriedOver('base.cpio.zst')).toBe(false);
    expect(isCarriedOver('persistence.1.cpio.zst.tmp')).toBe(false);
  });
});

describe('newestKernelPackage', () => {
  test('numeric order, only plain versioned amd64 images', () => {
    const search = [
      'linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)',
      'linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)',
      'linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs',
      'linux-image-6.1.0-58-cloud-amd64 - Linux 6.1 for x86-64 cloud',
      'linux-image-6.1.0-59-amd64-dbg - Debug symbols',
      'linux-image-amd64 - Linux for 64-bit PCs (meta-package)',
    ].join('\n');
    expect(newestKernelPackage(search)).toBe('linux-image-6.1.0-56-amd64');
    expect(newestKernelPackage('')).toBeNull();
  });
});

describe("QEMU's TCG fault (a boot retried once)", () => {
  const oops = [
    '[    2.409402] sched_clock: Marking stable (2336410225, 70462268)->(2515136526, -108264033)',
    '[    2.414875] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI',
    '[    2.415926] RIP: 0010:sched_clock_cpu+0x9/0x1d0',
    '[    2.420152] Kernel panic - not syncing: Fatal exception in interrupt',
  ].join('\n');
  test('an int3 oops before the init ran is the emulator', () => {
    expect(emulatorFault(oops)).toBe(true);
  });
  test('after the init started, or any other failure, it is the image', () => {
    expect(emulatorFault(`${phaseLine(1.5, 'start')}\n${oops}`)).toBe(false);
    expect(emulatorFault('[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs')).toBe(false);
    expect(emulatorFault('mkma[  4.00]: FATAL storage device LABEL=X did not appear within 3s')).toBe(false);
  });
});
