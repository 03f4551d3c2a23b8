import { describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { BOOT_GOOD_UNIT, BOOT_GOOD_UNIT_NAME, installBootGoodUnit } from '../../builder/boot-good.js';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfigText } from '../../config/load.js';
import { baseExclude } from '../../builder/base.js';
import { dpkgOptions, mmdebstrapArgs, packageSet, summarizeMmdebstrapError } from '../../builder/mmdebstrap.js';
import {
  grubEntries,
  grubEntry,
  kernelCommandLine,
  previousGeneration,
  stableDeviceName,
  systemdBootEntry,
  type StorageLocation,
} from '../../builder/bootentries.js';
import { configure, setRootPassword, writeHostname } from '../../builder/configure.js';

const config = (text = '') => parseConfigText(text, { file: null, env: {}, defaultHostname: 'buildhost' });

describe('bootstrap arguments', () => {
  test('default package set boots to systemd and carries what the initramfs takes from the image', () => {
    const pkgs = packageSet(config());
    for (const p of ['systemd-sysv', 'udev', 'kmod', 'dbus', 'zstd', 'attr', 'busybox-static', 'linux-image-amd64', 'nodejs']) {
      expect(pkgs).toContain(p);
    }
    expect(packageSet(config('install_mkma = false\npackages = ["vim", "zstd"]'))).not.toContain('nodejs');
    expect(packageSet(config('packages = ["vim", "zstd"]')).filter((p) => p === 'zstd')).toHaveLength(1);
  });

  test('mmdebstrap gets variant, architecture, components, packages, dpkg filters, suite, target, mirror', () => {
    const args = mmdebstrapArgs(config('variant = "minbase"\ncomponents = ["main", "contrib"]'), '/out/chroot.new');
    expect(args.slice(0, 3)).toEqual(['--variant=minbase', '--architectures=amd64', '--components=main,contrib']);
    expect(args.slice(-3)).toEqual(['trixie', '/out/chroot.new', 'http://deb.debian.org/debian']);
    expect(args).toContain('--dpkgopt=path-exclude=/etc/kernel/postinst.d/initramfs-tools');
    expect(args).toContain('--dpkgopt=path-include=/usr/share/doc/*/copyright');
  });

  test('slim = false keeps documentation but still never builds a distribution initrd', () => {
    const opts = dpkgOptions(config('slim = false'));
    expect(opts).toEqual(['path-exclude=/etc/kernel/postinst.d/initramfs-tools', 'path-exclude=/etc/kernel/postinst.d/dracut']);
  });

  test("mmdebstrap's failure is shortened to apt's reason with a hint", () => {
    const out = [
      'I: automatically chosen mode: root',
      'I: downloading packages with apt...',
      'E: Unable to locate package nosuch',
      'E: apt-get --yes -oApt::Get::Download-Only=true install failed',
      'E: mmdebstrap failed to run',
      'W: hooklistener errored out: E: received eof on socket',
    ].join('\n');
    expect(summarizeMmdebstrapError(out)).toBe(
      'mmdebstrap failed:\n  E: Unable to locate package nosuch\n  (check the package names in `packages` (mkma.toml) for this suite)',
    );
    const mirror =
      'E: Failed to fetch http://127.0.0.1:9/debian/dists/trixie/InRelease  Could not connect to 127.0.0.1:9\nE: apt-get update failed';
    expect(summarizeMmdebstrapError(mirror)).toMatch(/check `mirror` and `suite`/);
  });
});

describe('base image excludes', () => {
  const st = {} as fs.Stats;
  test('pseudo filesystems and caches keep their directory but not their contents', () => {
    for (const p of ['proc', 'sys', 'dev', 'run', 'tmp', 'var/tmp', 'var/lib/apt/lists']) expect(baseExclude(p, st)).toBe('empty');
    for (const p of ['etc', 'usr/bin/su', 'var/lib/apt', 'dev2', 'procs']) expect(baseExclude(p, st)).toBe('keep');
  });
});

describe('boot entries', () => {
  const loc: StorageLocation = {
    device: 'UUID=1234-abcd',
    stable: true,
    source: '/dev/nvme0n1p3',
    uuid: '1234-abcd',
    fstype: 'ext4',
    imagesPath: '/srv/mkma',
    mountpoint: '/',
  };
  test('the device is named by UUID, else PARTUUID, else LABEL; a /dev name only as the last resort, and marked', () => {
    expect(stableDeviceName({ source: '/dev/sda3', uuid: 'u-1', partuuid: 'p-1', label: 'L' })).toEqual({
      device: 'UUID=u-1',
      stable: true,
    });
    expect(stableDeviceName({ source: '/dev/sda3', uuid: null, partuuid: 'p-1', label: 'L' })).toEqual({
      device: 'PARTUUID=p-1',
      stable: true,
    });
    expect(stableDeviceName({ source: '/dev/sda3', label: 'MKMA' })).toEqual({ device: 'LABEL=MKMA', stable: true });
    expect(stableDeviceName({ source: '/dev/sda3', label: 'my disk' })).toEqual({ device: '/dev/sda3', stable: false });
    expect(stableDeviceName({ source: '/dev/vda' })).toEqual({ device: '/dev/vda', stable: false });
  });
  test('an entry whose device is a /dev name says so above it', () => {
    const devName: StorageLocation = { ...loc, device: '/dev/vda', stable: false, uuid: null, source: '/dev/vda' };
    expect(grubEntry('h', devName)).toMatch(/^# \/dev\/vda has no UUID, PARTUUID or LABEL .*\n# Find a steady one with `blkid \/dev\/vda`/);
    expect(systemdBootEntry('h', devName)).toMatch(/^# \/dev\/vda has no UUID/);
    expect(grubEntry('h', loc)).toMatch(/^menuentry/);
  });
  test('kernel command line names device and images path', () => {
    expect(kernelCommandLine(loc)).toBe('mkma_storage_device=UUID=1234-abcd mkma_images_path=/srv/mkma');
  });
  test('GRUB menuentry finds the filesystem by UUID and loads kernel and initramfs from the images path', () => {
    expect(grubEntry('myhost', loc)).toBe(
      'menuentry "mkma: myhost (RAM)" {\n\tsearch --no-floppy --fs-uuid --set=root 1234-abcd\n' +
        '\tlinux /srv/mkma/vmlinuz mkma_storage_device=UUID=1234-abcd mkma_images_path=/srv/mkma\n' +
        '\tinitrd /srv/mkma/initramfs.cpio.zst\n}',
    );
  });
  test('GRUB: the normal entry, a recovery entry without layers, and the previous generation', () => {
    const entries = grubEntries('myhost', loc, '20261122T021500Z');
    expect(entries.match(/^menuentry "[^"]*"/gm)).toEqual([
      'menuentry "mkma: myhost (RAM)"',
      'menuentry "mkma: myhost (RAM): recovery, without layers"',
      'menuentry "mkma: myhost (RAM): previous generation, layers up to 20261122T021500Z"',
    ]);
    expect(entries).toMatch(
      /\tlinux \/srv\/mkma\/vmlinuz mkma_storage_device=UUID=1234-abcd mkma_images_path=\/srv\/mkma mkma_layers=none\n/,
    );
    expect(entries).toMatch(/ mkma_layers=until=20261122T021500Z\n/);
    expect(grubEntries('myhost', loc, null).match(/^menuentry/gm)).toHaveLength(2);
    // the previous generation: every layer a boot applies but the newest
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-gen-'));
    for (const n of ['base', 'persistence.1', 'persistence.2@disabled', 'persistence.3@trial-2-1', 'persistence.4'])
      fs.writeFileSync(path.join(dir, `${n}.cpio.zst`), '');
    expect(previousGeneration(dir)).toBe('3');
    fs.rmSync(path.join(dir, 'persistence.1.cpio.zst'));
    fs.rmSync(path.join(dir, 'persistence.3@trial-2-1.cpio.zst'));
    expect(previousGeneration(dir)).toBeNull();
    fs.rmSync(dir, { recursive: true });
  });
  test('the unit that marks a boot good: in /usr/lib/systemd/system, after multi-user, enabled, runs mkma layers bless --booted', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-unit-'));
    // a tree configured by an earlier mkma: the unit in /etc/systemd/system, where it would
    // shadow the new one (and `systemctl mask` refuses: "File exists")
    fs.mkdirSync(path.join(root, 'etc/systemd/system'), { recursive: true });
    fs.writeFileSync(path.join(root, 'etc/systemd/system', BOOT_GOOD_UNIT_NAME), BOOT_GOOD_UNIT);
    installBootGoodUnit(root);
    installBootGoodUnit(root); // again: the same files
    const unit = fs.readFileSync(path.join(root, 'usr/lib/systemd/system', BOOT_GOOD_UNIT_NAME), 'utf8');
    expect(unit).toMatch(/^After=multi-user\.target$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/mkma layers bless --booted --quiet$/m);
    expect(unit).toMatch(/^ConditionPathExists=\/run\/mkma\/layers$/m);
    expect(fs.readlinkSync(path.join(root, 'etc/systemd/system/multi-user.target.wants', BOOT_GOOD_UNIT_NAME))).toBe(
      `/usr/lib/systemd/system/${BOOT_GOOD_UNIT_NAME}`,
    );
    // /etc/systemd/system is the administrator's: only the wants link is mkma's there
    expect(fs.readdirSync(path.join(root, 'etc/systemd/system'))).toEqual(['multi-user.target.wants']);
    // a mask there (what systemctl mask makes) is left alone
    fs.symlinkSync('/dev/null', path.join(root, 'etc/systemd/system', BOOT_GOOD_UNIT_NAME));
    installBootGoodUnit(root);
    expect(fs.readlinkSync(path.join(root, 'etc/systemd/system', BOOT_GOOD_UNIT_NAME))).toBe('/dev/null');
    fs.rmSync(root, { recursive: true });
  });
  test('systemd-boot entry', () => {
    const e = systemdBootEntry('myhost', loc);
    expect(e).toMatch(/^title\s+mkma: myhost \(RAM\)$/m);
    expect(e).toMatch(/^options\s+mkma_storage_device=UUID=1234-abcd mkma_images_path=\/srv\/mkma$/m);
  });
});

describe('configure (file edits, no chroot exec)', () => {
  const fake = () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-conf-'));
    fs.mkdirSync(path.join(root, 'etc/systemd/system'), { recursive: true });
    fs.writeFileSync(path.join(root, 'etc/hosts'), '127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost ip6-localhost\n');
    fs.writeFileSync(path.join(root, 'etc/shadow'), 'root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n');
    return root;
  };

  test('hostname and hosts', () => {
    const root = fake();
    writeHostname(root, 'newname');
    expect(fs.readFileSync(path.join(root, 'etc/hostname'), 'utf8')).toBe('newname\n');
    expect(fs.readFileSync(path.join(root, 'etc/hosts'), 'utf8')).toBe(
      '127.0.0.1\tlocalhost\n127.0.1.1\tnewname\n::1\tlocalhost ip6-localhost\n',
    );
  });

  test('root password policy', () => {
    const root = fake();
    const shadow = () => fs.readFileSync(path.join(root, 'etc/shadow'), 'utf8').split('\n')[0];
    setRootPassword(root, { kind: 'empty' });
    expect(shadow()).toBe('root::19000:0:99999:7:::');
    setRootPassword(root, { kind: 'locked' });
    expect(shadow()).toBe('root:!:19000:0:99999:7:::');
    setRootPassword(root, { kind: 'hash', hash: '$y$j9T$abc$def' });
    expect(shadow()).toBe('root:$y$j9T$abc$def:19000:0:99999:7:::');
    expect(fs.statSync(path.join(root, 'etc/shadow')).mode & 0o777).toBe(0o640);
  });

  test('configure is idempotent: a second run changes no file (reused trees pack the same)', () => {
    const root = fake();
    const c = config('hostname = "h1"\ninstall_mkma = false');
    configure(c, root);
    const files = [
      'etc/hostname',
      'etc/hosts',
      'etc/shadow',
      'etc/fstab',
      'etc/systemd/system/mkma-test.service',
      'usr/lib/mkma/mkma-test',
    ];
    const before = files.map((f) => fs.statSync(path.join(root, f)).mtimeMs);
    configure(c, root);
    expect(files.map((f) => fs.statSync(path.join(root, f)).mtimeMs)).toEqual(before);
    expect(fs.readlinkSync(path.join(root, 'etc/systemd/system/multi-user.target.wants/mkma-test.service'))).toBe(
      '/etc/systemd/system/mkma-test.service',
    );
    expect(fs.readFileSync(path.join(root, 'etc/systemd/system/mkma-test.service'), 'utf8')).toMatch(
      /ConditionKernelCommandLine=mkma_test/,
    );
  });
});
