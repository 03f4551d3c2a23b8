// Stage 2: configure the bootstrapped tree. Everything here edits files directly (no chroot
// exec), so it is idempotent, fast, and works for foreign-architecture images too.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config, RootPasswordPolicy } from '../config/types.js';

/** Writes only when the content differs: a reused tree keeps its mtimes, so images repeat. */
function writeIfChanged(file: string, content: string, mode?: number): void {
  try {
    if (fs.readFileSync(file, 'utf8') === content) return;
  } catch {
    /* absent */
  }
  fs.writeFileSync(file, content, mode === undefined ? undefined : { mode });
  if (mode !== undefined) fs.chmodSync(file, mode);
}

export function writeHostname(chroot: string, hostname: string): void {
  writeIfChanged(path.join(chroot, 'etc/hostname'), `${hostname}\n`);
  const hosts = path.join(chroot, 'etc/hosts');
  const lines = (fs.existsSync(hosts) ? fs.readFileSync(hosts, 'utf8') : '127.0.0.1\tlocalhost\n')
    .split('\n')
    .filter((l) => !/^127\.0\.1\.1\s/.test(l) && l !== '');
  lines.splice(1, 0, `127.0.1.1\t${hostname}`);
  writeIfChanged(hosts, lines.join('\n') + '\n');
}

/** Sets root's password field in /etc/shadow: '!' locked, '' empty, or the given crypt hash. */
export function setRootPassword(chroot: string, policy: RootPasswordPolicy): void {
  const shadow = path.join(chroot, 'etc/shadow');
  const field = policy.kind === 'locked' ? '!' : policy.kind === 'empty' ? '' : policy.hash;
  const lines = fs.readFileSync(shadow, 'utf8').split('\n');
  const i = lines.findIndex((l) => l.startsWith('root:'));
  if (i < 0) throw new Error('no root entry in /etc/shadow of the image');
  const parts = lines[i].split(':');
  parts[1] = field;
  lines[i] = parts.join(':');
  writeIfChanged(shadow, lines.join('\n'), 0o640);
}

export const TEST_UNIT_NAME = 'mkma-test.service';

/**
 * A unit that does nothing unless the kernel command line has `mkma_test` (as `mkma qemu`
 * sets it): then it prints the multi-user marker on the console, runs /run/mkma-test/run.sh
 * from a disk labelled MKMA-TEST if there is one, and powers off. Tests and the smoke boot
 * read the console; real boots never run it.
 */
export const TEST_UNIT = `[Unit]
Description=mkma boot test hook (only with mkma_test on the kernel command line)
ConditionKernelCommandLine=mkma_test
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/lib/mkma/mkma-test
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
`;

export const TEST_SCRIPT = `#!/bin/sh
# mkma boot test hook: see ${TEST_UNIT_NAME}
read -r up _ </proc/uptime
echo "MKMA-TEST: multi-user reached uptime=$up"
dev=$(blkid -L MKMA-TEST 2>/dev/null)
if [ -n "$dev" ]; then
	mkdir -p /run/mkma-test
	if mount -o ro "$dev" /run/mkma-test && [ -f /run/mkma-test/run.sh ]; then
		echo "MKMA-TEST: running run.sh"
		sh /run/mkma-test/run.sh 2>&1 | sed 's/^/MKMA-TEST-OUT: /'
		echo "MKMA-TEST: run.sh finished"
	fi
	umount /run/mkma-test 2>/dev/null
fi
echo "MKMA-TEST: done"
systemctl --no-block poweroff
`;

export function installTestHook(chroot: string): void {
  const lib = path.join(chroot, 'usr/lib/mkma');
  fs.mkdirSync(lib, { recursive: true });
  writeIfChanged(path.join(lib, 'mkma-test'), TEST_SCRIPT, 0o755);
  const unitDir = path.join(chroot, 'etc/systemd/system');
  writeIfChanged(path.join(unitDir, TEST_UNIT_NAME), TEST_UNIT);
  const wants = path.join(unitDir, 'multi-user.target.wants');
  fs.mkdirSync(wants, { recursive: true });
  const link = path.join(wants, TEST_UNIT_NAME);
  const target = `/etc/systemd/system/${TEST_UNIT_NAME}`;
  if (!fs.existsSync(link) || fs.readlinkSync(link) !== target) {
    fs.rmSync(link, { force: true });
    fs.symlinkSync(target, link);
  }
}

/** The directory holding mkma's package.json (from dist/builder or builder/). */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find mkma package root');
    dir = up;
  }
  return dir;
}

/**
 * Copies mkma (compiled code, boot templates, production dependencies only) into
 * /usr/lib/mkma with a `mkma` command, so `mkma persist` works offline after boot. The
 * image's own nodejs package runs it.
 */
export function installMkma(chroot: string): { bytes: number } {
  const src = packageRoot();
  const dest = path.join(chroot, 'usr/lib/mkma/app');
  fs.rmSync(dest, { recursive: true, force: true });
  fs.mkdirSync(dest, { recursive: true });
  let bytes = 0;
  const copy = (from: string, to: string, skip?: (p: string) => boolean) => {
    fs.cpSync(from, to, {
      recursive: true,
      preserveTimestamps: true,
      verbatimSymlinks: true,
      filter: (p) => {
        if (skip?.(p) || p.endsWith('.map')) return false;
        const st = fs.lstatSync(p);
        if (st.isFile()) bytes += st.size;
        return true;
      },
    });
  };
  for (const part of ['package.json', 'bin', 'dist', 'init/templates', 'init/unpack', 'persist/default.rules']) {
    if (!fs.existsSync(path.join(src, part))) throw new Error(`mkma is not built (${part} missing): run npm run build`);
    copy(path.join(src, part), path.join(dest, part));
  }
  const ls = spawnSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: src, encoding: 'utf8' });
  const dirs = ls.stdout.split('\n').filter((d) => d && d !== src && d.startsWith(src + '/node_modules/'));
  if (!dirs.length) throw new Error(`cannot list mkma's production dependencies: ${ls.stderr}`);
  for (const d of dirs) {
    // nested node_modules are listed on their own when they are production dependencies
    copy(d, path.join(dest, path.relative(src, d)), (p) => p !== d && p.startsWith(path.join(d, 'node_modules')));
  }
  const bin = path.join(chroot, 'usr/local/bin/mkma');
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  fs.rmSync(bin, { force: true });
  fs.symlinkSync('/usr/lib/mkma/app/bin/mkma.js', bin);
  return { bytes };
}

export interface ConfigureReport {
  mkmaBytes: number;
}

export function configure(c: Config, chroot: string): ConfigureReport {
  writeHostname(chroot, c.hostname);
  setRootPassword(chroot, c.rootPassword);
  // A RAM system has no fstab entries: the root is set up by the initramfs.
  writeIfChanged(path.join(chroot, 'etc/fstab'), '# mkma: the root filesystem is a RAM overlay set up by the initramfs\n');
  // The distribution initrd symlinks point at files that never exist in an mkma image.
  for (const l of ['initrd.img', 'initrd.img.old']) fs.rmSync(path.join(chroot, l), { force: true });
  installTestHook(chroot);
  const mkmaBytes = c.installMkma ? installMkma(chroot).bytes : 0;
  return { mkmaBytes };
}
