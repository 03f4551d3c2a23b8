// Kernel module resolution (builder/kernel-modules.ts): the index parsers, the load order,
// decompression, and the storage drivers matched by hardware in the generated init.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  decompressModule,
  moduleClosure,
  moduleName,
  parseBuiltin,
  parseDeviceAliases,
  parseModulesAlias,
  parseModulesDep,
  parseSoftdep,
} from '../../builder/kernel-modules.js';
import { planModules } from '../../builder/initramfs.js';
import { generateInit } from '../../init/generate.js';
import { put, useTempDir } from '../helpers/files.js';

const tempDir = useTempDir('modules');

const MODULES_DEP = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.zst: kernel/drivers/char/hw_random/rng-core.ko.zst
kernel/drivers/char/hw_random/rng-core.ko.zst:
kernel/drivers/md/dm-mod.ko.gz:
kernel/fs/overlayfs/overlay.ko:
kernel/test/cyc_a.ko:
kernel/test/cyc_b.ko:
`;
const MODULES_SOFTDEP = `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crc32c
softdep jbd2 pre: no_such_thing
softdep virtio_blk post: virtio-rng
softdep cyc_a post: cyc_b
softdep cyc_b pre: cyc_a
`;
const MODULES_BUILTIN = `kernel/drivers/block/loop.ko
kernel/fs/squashfs/squashfs.ko
`;
const MODULES_ALIAS = `# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
alias virtio:d00000002v* virtio_blk
alias fs-ext4 ext4
alias acpi*:PNP0A03:* dm_mod
`;

describe('module index parsers', () => {
  test('parseModulesDep', () => {
    const deps = parseModulesDep(MODULES_DEP);
    expect(deps.get('kernel/fs/ext4/ext4.ko.xz')).toEqual([
      'kernel/lib/crc16.ko.xz',
      'kernel/fs/mbcache.ko.xz',
      'kernel/fs/jbd2/jbd2.ko.xz',
    ]);
    expect(deps.get('kernel/lib/crc16.ko.xz')).toEqual([]);
    expect(deps.size).toBe(15);
  });

  test('parseSoftdep: pre and post, merged across lines, names normalised', () => {
    const sd = parseSoftdep('softdep foo-bar pre: a-b c post: d\nsoftdep foo_bar post: e\n# softdep x pre: y\n');
    expect([...sd]).toEqual([['foo_bar', { pre: ['a_b', 'c'], post: ['d', 'e'] }]]);
  });

  test('parseBuiltin and moduleName', () => {
    expect(parseBuiltin(MODULES_BUILTIN).map(moduleName)).toEqual(['loop', 'squashfs']);
    expect(['a/dm-mod.ko.gz', 'x.ko.zst', 'y.ko.xz', 'z.ko', 'crc32c-intel'].map(moduleName)).toEqual([
      'dm_mod',
      'x',
      'y',
      'z',
      'crc32c_intel',
    ]);
  });

  test('parseDeviceAliases keeps the device globs of the modules asked for', () => {
    expect([...parseDeviceAliases(MODULES_ALIAS, new Set(['virtio_blk', 'ext4']))]).toEqual([
      ['virtio_blk', ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'virtio:d00000002v*']],
    ]);
  });

  test('parseModulesAlias keeps exact aliases only', () => {
    expect([...parseModulesAlias(MODULES_ALIAS)]).toEqual([
      ['crypto_crc32c', ['crc32c_generic', 'crc32c_intel']],
      ['crc32c', ['crc32c_generic', 'crc32c_intel']],
      ['fs_ext4', ['ext4']],
    ]);
  });
});

/** A kernel modules directory holding the index files above (no module files). */
function modulesDir(version: string): string {
  const dir = join(tempDir(), 'modules', version);
  put(dir, 'modules.dep', MODULES_DEP);
  put(dir, 'modules.softdep', MODULES_SOFTDEP);
  put(dir, 'modules.builtin', MODULES_BUILTIN);
  put(dir, 'modules.alias', MODULES_ALIAS);
  return dir;
}

describe('moduleClosure', () => {
  let dir: string;
  beforeAll(() => {
    dir = modulesDir('6.12.0-test');
  });

  test('load order, softdeps through aliases, built-in and missing modules', () => {
    expect(moduleClosure(dir, ['ext4', 'virtio_blk', 'loop', 'dm-mod', 'nosuch', 'ext4', 'overlay', 'LOOP'])).toEqual({
      order: [
        // ext4's `pre: crc32c`, an alias provided by two modules
        'kernel/arch/x86/crypto/crc32c-intel.ko.xz',
        'kernel/crypto/crc32c_generic.ko.xz',
        // ext4's dependencies, last listed first (jbd2's nonexistent softdep is ignored)
        'kernel/fs/jbd2/jbd2.ko.xz',
        'kernel/fs/mbcache.ko.xz',
        'kernel/lib/crc16.ko.xz',
        'kernel/fs/ext4/ext4.ko.xz',
        'kernel/drivers/virtio/virtio.ko.xz',
        'kernel/drivers/virtio/virtio_ring.ko.xz',
        'kernel/drivers/block/virtio_blk.ko.xz',
        // virtio_blk's `post: virtio-rng`, with its own dependency
        'kernel/drivers/char/hw_random/rng-core.ko.zst',
        'kernel/drivers/char/hw_random/virtio-rng.ko.zst',
        'kernel/drivers/md/dm-mod.ko.gz',
        'kernel/fs/overlayfs/overlay.ko',
      ],
      builtin: ['loop'],
      missing: ['nosuch', 'LOOP'],
    });
  });

  test('every module comes after all its modules.dep dependencies', () => {
    const deps = parseModulesDep(MODULES_DEP);
    const { order } = moduleClosure(dir, [...deps.keys()].map(moduleName).reverse());
    expect(new Set(order).size).toBe(order.length);
    expect(order.length).toBe(deps.size);
    order.forEach((m, i) => {
      for (const d of deps.get(m)!) expect(order.indexOf(d)).toBeLessThan(i);
    });
  });

  test('wanted names resolve through aliases too; an explicit alias map replaces modules.alias', () => {
    expect(moduleClosure(dir, ['crypto-crc32c']).order).toEqual([
      'kernel/arch/x86/crypto/crc32c-intel.ko.xz',
      'kernel/crypto/crc32c_generic.ko.xz',
    ]);
    expect(moduleClosure(dir, ['ext4'], { aliases: new Map([['crc32c', ['crc32c_generic']]]) }).order[0]).toBe(
      'kernel/crypto/crc32c_generic.ko.xz',
    );
    expect(moduleClosure(dir, ['ext4'], { aliases: new Map() }).order[0]).toBe('kernel/fs/jbd2/jbd2.ko.xz');
  });

  test('softdep cycles terminate; optional drops missing modules', () => {
    expect(moduleClosure(dir, ['cyc_a']).order).toEqual(['kernel/test/cyc_a.ko', 'kernel/test/cyc_b.ko']);
    expect(moduleClosure(dir, ['cyc_b']).order).toEqual(['kernel/test/cyc_a.ko', 'kernel/test/cyc_b.ko']);
    expect(moduleClosure(dir, ['nosuch', 'squashfs'], { optional: true })).toEqual({ order: [], builtin: ['squashfs'], missing: [] });
  });

  test('modules.softdep, modules.builtin and modules.alias are optional files', () => {
    const bare = join(tempDir(), 'modules/bare');
    put(bare, 'modules.dep', MODULES_DEP);
    expect(moduleClosure(bare, ['ext4', 'loop'])).toEqual({
      order: ['kernel/fs/jbd2/jbd2.ko.xz', 'kernel/fs/mbcache.ko.xz', 'kernel/lib/crc16.ko.xz', 'kernel/fs/ext4/ext4.ko.xz'],
      builtin: [],
      missing: ['loop'],
    });
  });
});

describe('decompressModule', () => {
  const plain = Buffer.concat([
    Buffer.from('\x7fELF fake module\n'),
    Buffer.alloc(100_000, 'abc'),
    Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255)),
  ]);
  let dir: string;
  beforeAll(() => {
    dir = join(tempDir(), 'decompress');
    put(dir, 'm.ko', plain);
    execFileSync('xz', ['-kq', join(dir, 'm.ko')]); // m.ko.xz
    execFileSync('zstd', ['-q', join(dir, 'm.ko'), '-o', join(dir, 'm.ko.zst')]);
    writeFileSync(join(dir, 'm.ko.gz'), execFileSync('gzip', ['-c', join(dir, 'm.ko')]));
  });

  test.each(['m.ko.xz', 'm.ko.zst', 'm.ko.gz', 'm.ko'])('%s round-trips to the plain module', async (src) => {
    const dest = join(dir, 'out', src, 'm.ko'); // parents are created
    await decompressModule(join(dir, src), dest);
    expect(readFileSync(dest).equals(plain)).toBe(true);
  });

  test('a corrupt module rejects and leaves no file behind', async () => {
    put(dir, 'bad.ko.xz', 'not xz at all');
    const dest = join(dir, 'out/bad.ko');
    await expect(decompressModule(join(dir, 'bad.ko.xz'), dest)).rejects.toThrow(/xz -dc .*bad\.ko\.xz failed/);
    expect(existsSync(dest)).toBe(false);
  });
});

describe('storage drivers by hardware (init: match_storage)', () => {
  let dir: string;
  beforeAll(() => {
    dir = modulesDir('6.12.0-match');
  });

  test('planModules: each storage module with device aliases, with its dependencies first', () => {
    const plan = planModules(
      { version: '6.12.0-match', image: '/nonexistent', modulesDir: dir },
      { storage: ['virtio_blk', 'dm-mod'], filesystems: { ext4: ['ext4'] }, overlay: ['overlay'] },
      [],
    );
    expect(plan.groups.storageByDevice).toEqual([
      {
        patterns: ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'virtio:d00000002v*'],
        load: ['virtio', 'virtio_ring', 'virtio_blk', 'rng_core', 'virtio_rng'],
      },
    ]);
  });

  test('the generated match_storage picks the drivers of the devices given, under busybox', () => {
    const init = generateInit({
      modules: {
        storage: ['virtio_blk', 'nvme'],
        filesystems: {},
        overlay: [],
        storageByDevice: [
          { patterns: ['virtio:d00000002v*'], load: ['virtio_blk'] },
          { patterns: ['pci:v*d*sv*sd*bc01sc08i02*', 'odd:a b(c)|*'], load: ['nvme_core', 'nvme'] },
        ],
      },
      defaultRamSize: '50%',
      deviceTimeoutSec: 30,
      version: 't',
    });
    const fn = /^match_storage\(\) \{\n[\s\S]*?\n\}$/m.exec(init)![0];
    const run = (...aliases: string[]) =>
      execFileSync(
        'busybox',
        ['sh', '-c', `${fn}\nMKMA_MATCHED=''\nfor a in "$@"; do match_storage "$a"; done\necho "[$MKMA_MATCHED]"`, 'sh', ...aliases],
        { encoding: 'utf8' },
      ).trim();
    expect(run('virtio:d00000002v00001AF4')).toBe('[,virtio_blk]');
    expect(run('pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01', 'virtio:d00000001v00001AF4')).toBe('[]');
    expect(run('pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02', 'virtio:d00000002v00001AF4')).toBe('[,nvme_core nvme,virtio_blk]');
    expect(run('odd:a b(c)|x')).toBe('[,nvme_core nvme]');
  });

  test('start_chains loads each chain once, in the background, in its own order', () => {
    const init = generateInit({
      modules: { storage: [], filesystems: {}, overlay: [] },
      defaultRamSize: '50%',
      deviceTimeoutSec: 30,
      version: 't',
    });
    const fn = /^start_chains\(\) \{\n[\s\S]*?\n\}$/m.exec(init)![0];
    const out = execFileSync(
      'busybox',
      [
        'sh',
        '-c',
        [
          // a stand-in for load_modules: one line per chain, its modules in order
          'load_modules() { echo "$*"; }',
          fn,
          "MKMA_STARTED=','",
          "start_chains ',scsi_common scsi_mod ahci,virtio_blk'",
          "start_chains ',virtio_blk,scsi_common scsi_mod virtio_scsi'",
          'wait',
          'echo "started: $MKMA_STARTED"',
        ].join('\n'),
      ],
      { encoding: 'utf8' },
    )
      .trim()
      .split('\n');
    expect(out.pop()).toBe('started: ,scsi_common scsi_mod ahci,virtio_blk,scsi_common scsi_mod virtio_scsi,');
    expect(out.sort()).toEqual(['scsi_common scsi_mod ahci', 'scsi_common scsi_mod virtio_scsi', 'virtio_blk']);
  });
});
