// mkma install's decisions without a disk: the layout and its sizes, the target refusals, the
// GRUB menu made from a stick's generations.
import { describe, expect, test } from '@jest/globals';
import {
  ALIGN_BYTES,
  DEFAULT_ESP_BYTES,
  GiB,
  MiB,
  PARTITIONS,
  checkHostname,
  dataBytesNeeded,
  describeNeed,
  diskBytesNeeded,
  espBytesNeeded,
  generationOfBase,
  generationOfDir,
  isMkmaTable,
  parsePartitionTable,
  parseSize,
  planDisk,
  sgdiskArgs,
} from '../../install/layout.js';
import { partitionNode } from '../../install/blockdev.js';
import { checkAppend, grubCfg, menuCfg, type GenerationRecord, type MenuInput } from '../../install/menu.js';
import { refusal, type TargetFacts } from '../../install/target.js';

const SGDISK_P = `Disk x.img: 2097152 sectors, 1024.0 MiB
Sector size (logical): 512 bytes
Disk identifier (GUID): 775EF3A9-63FB-49C5-915E-B2F77A057E2F
Partition table holds up to 128 entries

Number  Start (sector)    End (sector)  Size       Code  Name
   1            2048            4095   1024.0 KiB  EF02  mkma-bios
   2            4096         1052671   512.0 MiB   EF00  mkma-esp
   3         1052672         2093055   508.0 MiB   8300  mkma-data
`;

// the test image's sizes (measured): kernel 8 MiB, initramfs 7 MiB, base 60 MiB
const TEST_IMAGE = { kernel: 8 * MiB, initramfs: 7 * MiB, base: 60 * MiB };

describe('layout', () => {
  test('a 4 GiB disk: BIOS boot 1 MiB at 1 MiB, the ESP after it, data to the last whole MiB before the backup GPT', () => {
    const plan = planDisk(4 * GiB, DEFAULT_ESP_BYTES);
    expect(plan.bios).toEqual({ start: MiB, size: MiB });
    expect(plan.esp).toEqual({ start: 2 * MiB, size: 512 * MiB });
    expect(plan.data.start).toBe(514 * MiB);
    expect(plan.data.start + plan.data.size).toBe(4 * GiB - MiB);
    for (const p of [plan.bios, plan.esp, plan.data]) expect(p.start % ALIGN_BYTES).toBe(0);
  });

  test('a disk size that is not whole MiB: the data partition ends on a MiB boundary before the backup table', () => {
    const plan = planDisk(1000 * MiB + 12345, 64 * MiB);
    expect((plan.data.start + plan.data.size) % MiB).toBe(0);
    expect(plan.data.start + plan.data.size).toBeLessThanOrEqual(1000 * MiB + 12345 - MiB);
  });

  test('sgdisk gets sector ranges, type codes and GPT names of the three partitions', () => {
    const args = sgdiskArgs(planDisk(GiB, 512 * MiB), '/dev/loop7');
    expect(args).toEqual([
      '--new=1:2048:4095',
      '--typecode=1:EF02',
      '--change-name=1:mkma-bios',
      '--new=2:4096:1052671',
      '--typecode=2:EF00',
      '--change-name=2:mkma-esp',
      '--new=3:1052672:2095103',
      '--typecode=3:8300',
      '--change-name=3:mkma-data',
      '/dev/loop7',
    ]);
  });

  test("sgdisk --print's table is read back, and only mkma's three partitions make an mkma stick", () => {
    const rows = parsePartitionTable(SGDISK_P);
    expect(rows).toEqual([
      { number: 1, startSector: 2048, endSector: 4095, code: 'EF02', name: 'mkma-bios' },
      { number: 2, startSector: 4096, endSector: 1052671, code: 'EF00', name: 'mkma-esp' },
      { number: 3, startSector: 1052672, endSector: 2093055, code: '8300', name: 'mkma-data' },
    ]);
    expect(isMkmaTable(rows)).toBe(true);
    expect(isMkmaTable(rows.slice(0, 2))).toBe(false);
    expect(isMkmaTable(rows.map((r) => (r.number === 3 ? { ...r, name: 'home' } : r)))).toBe(false);
    expect(isMkmaTable(rows.map((r) => (r.number === 2 ? { ...r, code: '0700' } : r)))).toBe(false);
    expect(isMkmaTable([...rows, { number: 4, startSector: 1, endSector: 2, code: '8300', name: 'x' }])).toBe(false);
    expect(isMkmaTable(parsePartitionTable('Creating new GPT entries in memory.\n'))).toBe(false);
  });

  test('the ESP holds two generations of kernel and initramfs per hostname: the default 512 MiB fits a dozen test images', () => {
    expect(espBytesNeeded(TEST_IMAGE)).toBe(2 * (8 + 7) * MiB);
    const grub = 8 * MiB; // both platforms' modules and images
    expect(12 * espBytesNeeded(TEST_IMAGE) + grub).toBeLessThan(DEFAULT_ESP_BYTES);
    // a distribution kernel with a big initramfs (12 + 60 MiB): three hostnames in 512 MiB
    const big = { kernel: 12 * MiB, initramfs: 60 * MiB, base: 400 * MiB };
    expect(Math.floor((DEFAULT_ESP_BYTES - grub) / espBytesNeeded(big))).toBe(3);
  });

  test('the data partition needs the base twice (an update keeps the previous) plus room for layers; the disk adds ESP and 3 MiB', () => {
    expect(dataBytesNeeded(TEST_IMAGE)).toBeGreaterThan(2 * TEST_IMAGE.base + 128 * MiB);
    expect(dataBytesNeeded(TEST_IMAGE)).toBeLessThan(1.1 * (2 * TEST_IMAGE.base + 128 * MiB));
    expect(diskBytesNeeded(TEST_IMAGE, 64 * MiB)).toBe(3 * MiB + 64 * MiB + dataBytesNeeded(TEST_IMAGE));
    expect(describeNeed(TEST_IMAGE, 64 * MiB)).toMatch(
      /^[0-9.]+ MiB: 64 MiB for the ESP \(--esp-size\), [0-9.]+ MiB for the data partition/,
    );
  });

  test('sizes: units, whole MiB, refusals', () => {
    expect(parseSize('4G', '--size')).toBe(4 * GiB);
    expect(parseSize('1500M', '--size')).toBe(1500 * MiB);
    expect(parseSize('512MiB', '--size')).toBe(512 * MiB);
    expect(parseSize('1.5G', '--size')).toBe(1536 * MiB);
    expect(parseSize(String(3 * MiB + 5), '--size')).toBe(3 * MiB);
    expect(() => parseSize('100K', '--size')).toThrow(/less than 1 MiB/);
    expect(() => parseSize('lots', '--esp-size')).toThrow(/--esp-size: "lots" is not a size/);
  });

  test('generation names and partition nodes', () => {
    expect(generationOfBase('base.g12.cpio.zst')).toBe(12);
    expect(generationOfBase('base.cpio.zst')).toBeNull();
    expect(generationOfBase('base.g0.cpio.zst')).toBeNull();
    expect(generationOfDir('G3')).toBe(3); // FAT may report names upper-case
    expect(generationOfDir('g3.tmp')).toBeNull();
    expect(partitionNode('/dev/sdb', 2)).toBe('/dev/sdb2');
    expect(partitionNode('/dev/loop3', 2)).toBe('/dev/loop3p2');
    expect(partitionNode('/dev/nvme0n1', 3)).toBe('/dev/nvme0n1p3');
  });

  test('hostnames that go into paths and the menu: RFC 1123 only', () => {
    expect(checkHostname('web-1', 'x')).toBe('web-1');
    for (const bad of ['-a', 'a-', 'a b', "a'b", 'a/b', '..', '', 'x'.repeat(64)])
      expect(() => checkHostname(bad, 'mkma.json')).toThrow(/mkma.json/);
  });
});

describe('target refusals', () => {
  const disk: TargetFacts = {
    given: '/dev/sdb',
    kind: 'block',
    name: 'sdb',
    sizeBytes: 16 * GiB,
    readOnly: false,
    model: 'SanDisk Cruzer',
    mounted: [],
    swap: [],
    holders: [],
    holdsRoot: false,
    runningStorage: null,
    loopDevices: [],
  };
  const file: TargetFacts = { ...disk, given: 'stick.img', kind: 'file', name: undefined, model: 'disk image file' };

  test('an idle disk or file big enough is accepted', () => {
    expect(refusal(disk, 'install', 2 * GiB)).toBeNull();
    expect(refusal(file, 'install', 2 * GiB)).toBeNull();
  });

  test.each<[string, Partial<TargetFacts>, RegExp]>([
    ['missing', { kind: 'missing' }, /does not exist \(give --size/],
    [
      'a directory',
      { kind: 'other', otherType: 'directory' },
      /is a directory: mkma install writes to a block device \(\/dev\/sdX\) or a disk image file/,
    ],
    ['a character device', { kind: 'other', otherType: 'character device' }, /is a character device/],
    ['a partition', { partitionOf: 'sdb' }, /is a partition of \/dev\/sdb: give the whole disk/],
    ['the root disk', { holdsRoot: true }, /holds the running system's root filesystem/],
    ['the running mkma storage', { runningStorage: 'UUID=abc' }, /holds the images this mkma system booted from \(UUID=abc\).*mkma update/],
    ['mounted', { mounted: ['/dev/sdb1 on /media/x'] }, /is in use: \/dev\/sdb1 on \/media\/x; unmount it first/],
    ['swap', { swap: ['/dev/sdb2'] }, /in use as swap/],
    ['held by device-mapper', { holders: ['dm-0 (on sdb3)'] }, /in use by dm-0 \(on sdb3\)/],
    ['attached to a loop device', { loopDevices: ['/dev/loop4'] }, /attached to \/dev\/loop4; detach it first/],
    ['read-only', { readOnly: true }, /is read-only/],
  ])('refused: %s', (_what, change, why) => {
    expect(refusal({ ...disk, ...change }, 'install', GiB)).toMatch(why);
  });

  test('too small: the message says how much the images need', () => {
    const why = refusal({ ...disk, sizeBytes: 512 * MiB }, 'install', 700 * MiB, '700.0 MiB: the ESP and the data');
    expect(why).toBe('/dev/sdb is too small: 512 MiB, and the images need at least 700.0 MiB: the ESP and the data');
    expect(refusal({ ...disk, sizeBytes: 700 * MiB }, 'install', 700 * MiB)).toBeNull();
  });

  test('update may write to the stick the running system booted from; install may not', () => {
    const running = { ...disk, runningStorage: 'UUID=abc' };
    expect(refusal(running, 'update')).toBeNull();
    expect(refusal(running, 'install')).not.toBeNull();
    expect(refusal({ ...running, mounted: ['/dev/sdb3 on /run/mkma/storage'] }, 'update')).toMatch(/in use/);
  });
});

describe('GRUB menu', () => {
  const gen = (hostname: string, generation: number, append: string[] = []): GenerationRecord => ({
    hostname,
    generation,
    installedAt: `2026-11-0${generation}T10:00:00.000Z`,
    mkmaVersion: '0.1.0',
    kernelVersion: '6.1.0-28-amd64',
    base: { file: `base.g${generation}.cpio.zst`, bytes: 1, sha256: '' },
    kernelBytes: 1,
    initramfsBytes: 1,
    kernelSha256: '',
    initramfsSha256: '',
    append,
  });
  const input = (hosts: MenuInput['hosts'], luksUuid?: string): MenuInput => ({ dataUuid: 'd4a7-uuid', luksUuid, hosts, timeoutSec: 5 });
  const entries = (cfg: string) =>
    [...cfg.matchAll(/^menuentry '([^']*)' --id '([^']*)' \{\n(.*?)\n\}/gms)].map((m) => ({ title: m[1], id: m[2], body: m[3] }));

  test('one hostname, one generation: the normal entry then recovery without layers, by UUID and never by /dev name', () => {
    const cfg = menuCfg(input([{ hostname: 'web', generations: [gen('web', 1, ['console=ttyS0'])] }]));
    expect(cfg).toMatch(/^set timeout=5$/m);
    const e = entries(cfg);
    expect(e.map((x) => x.id)).toEqual(['mkma-web', 'mkma-web-recovery']);
    expect(e[0].body).toContain(
      '  linux /mkma/web/g1/vmlinuz mkma_storage_device=UUID=d4a7-uuid mkma_images_path=/images/web mkma_base=base.g1.cpio.zst console=ttyS0\n  initrd /mkma/web/g1/initramfs.cpio.zst',
    );
    expect(e[1].title).toBe('mkma: web, recovery (no layers)');
    expect(e[1].body).toMatch(/mkma_base=base\.g1\.cpio\.zst mkma_layers=none console=ttyS0$/m);
    expect(cfg).not.toMatch(/\/dev\//);
  });

  test('after an update: current, previous (its own kernel, initramfs and base), recovery of the current', () => {
    const e = entries(menuCfg(input([{ hostname: 'web', generations: [gen('web', 3), gen('web', 2)] }])));
    expect(e.map((x) => x.title)).toEqual([
      'mkma: web',
      'mkma: web, previous generation (installed 2026-11-02)',
      'mkma: web, recovery (no layers)',
    ]);
    expect(e[0].body).toMatch(/linux \/mkma\/web\/g3\/vmlinuz .*mkma_base=base\.g3\.cpio\.zst/);
    expect(e[1].body).toMatch(/linux \/mkma\/web\/g2\/vmlinuz .*mkma_base=base\.g2\.cpio\.zst\n {2}initrd \/mkma\/web\/g2\/initramfs/);
    expect(e[2].body).toMatch(/g3\/vmlinuz .*mkma_layers=none/);
  });

  test('several hostnames, sorted; a hostname without a complete generation has no entry; LUKS named by UUID', () => {
    const cfg = menuCfg(
      input(
        [
          { hostname: 'zeta', generations: [gen('zeta', 1)] },
          { hostname: 'alpha', generations: [gen('alpha', 4)] },
          { hostname: 'empty', generations: [] },
        ],
        'luks-uuid',
      ),
    );
    expect(entries(cfg).map((x) => x.id)).toEqual(['mkma-alpha', 'mkma-alpha-recovery', 'mkma-zeta', 'mkma-zeta-recovery']);
    expect(cfg).toMatch(/mkma_images_path=\/images\/alpha mkma_base=base\.g4\.cpio\.zst mkma_luks=UUID=luks-uuid$/m);
  });

  test('grub.cfg is fixed: serial console when present, then menu.cfg, else menu.cfg.new (a power cut between delete and rename)', () => {
    const cfg = grubCfg();
    expect(cfg).toMatch(/if serial --unit=0 --speed=115200; then/);
    expect(cfg).toMatch(
      /if \[ -f \/boot\/grub\/menu\.cfg \]; then\n {2}source \/boot\/grub\/menu\.cfg\nelif \[ -f \/boot\/grub\/menu\.cfg\.new \]; then\n {2}source \/boot\/grub\/menu\.cfg\.new/,
    );
  });

  test('--append words GRUB would read as syntax are refused', () => {
    expect(checkAppend(['console=ttyS0,115200', 'quiet'])).toEqual(['console=ttyS0,115200', 'quiet']);
    for (const w of ["a'b", 'x;reboot', '$root', 'a{b}', 'a\\b']) expect(() => checkAppend([w])).toThrow(/GRUB would read as syntax/);
  });

  test('PARTITIONS carry the GPT type GUIDs blkid reports', () => {
    expect(PARTITIONS.esp.typeGuid).toBe('c12a7328-f81f-11d2-ba4b-00a0c93ec93b');
    expect(PARTITIONS.bios.typeGuid).toBe('21686148-6449-6e6f-744e-656564454649');
  });
});
