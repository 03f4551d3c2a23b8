// Stage 2: configure the bootstrapped tree. Everything here edits files directly (no chroot
// exec), so it is idempotent, fast, and works for foreign-architecture images too.
import { installBootGoodUnit } from './boot-good.js';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config, RootPasswordPolicy } from '../config/types.js';
import { applyBootTuning, BOOT_TUNING_CONTENTS, removeBootTuning } from './boot-tuning.js';

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

export function mkmaVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** The parts of mkma itself installed into the image (relative to the package root). */
export const MKMA_PARTS = ['package.json', 'bin', 'dist', 'init/templates', 'init/unpack', 'persist/default.rules'];

interface PackageJson {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/**
 * mkma's production dependencies as installed: the directories `npm ls --omit=dev --all
 * --parseable` lists (dependencies, and optional and peer dependencies when installed),
 * resolved the way Node resolves them (the nearest node_modules up the tree). Reading the
 * package.json files takes milliseconds; `npm ls` took a second on every build.
 */
export function productionDependencyDirs(root: string): string[] {
  const found = new Set<string>();
  const readPkg = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
  const resolve = (from: string, name: string): string | null => {
    for (let d = from; ; d = path.dirname(d)) {
      if (path.basename(d) !== 'node_modules') {
        const c = path.join(d, 'node_modules', name);
        if (fs.existsSync(path.join(c, 'package.json'))) return c;
      }
      if (d === root || path.dirname(d) === d) return null;
    }
  };
  const visit = (dir: string) => {
    const pkg = readPkg(dir);
    const required = Object.keys(pkg.dependencies ?? {});
    const optional = [...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})];
    for (const name of [...new Set([...required, ...optional])].sort()) {
      const d = resolve(dir, name);
      if (!d) {
        if (required.includes(name) && !pkg.optionalDependencies?.[name]) {
          throw new Error(
            `mkma's production dependency ${name} (needed by ${path.relative(root, dir) || 'mkma'}) is not installed: run npm ci`,
          );
        }
        continue;
      }
      if (found.has(d)) continue;
      found.add(d);
      visit(d);
    }
  };
  visit(root);
  return [...found].sort();
}

/** What installMkma copies: [source, path relative to /usr/lib/mkma/app] for each top entry, and the file filter. */
function mkmaSources(src: string): Array<{ from: string; rel: string; skip: (p: string) => boolean }> {
  const noMaps = (p: string) => p.endsWith('.map');
  const parts = MKMA_PARTS.map((part) => {
    if (!fs.existsSync(path.join(src, part))) throw new Error(`mkma is not built (${part} missing): run npm run build`);
    return { from: path.join(src, part), rel: part, skip: noMaps };
  });
  const deps = productionDependencyDirs(src).map((d) => ({
    from: d,
    rel: path.relative(src, d),
    // nested node_modules are listed on their own when they are production dependencies
    skip: (p: string) => noMaps(p) || (p !== d && p.startsWith(path.join(d, 'node_modules'))),
  }));
  return [...parts, ...deps];
}

let fingerprintMemo: { root: string; value: MkmaFingerprint } | null = null;

export interface MkmaFingerprint {
  /** sha256 over what installMkma copies */
  hash: string;
  /** sha256 over mkma's own files only (code, templates, the unpacker's source) */
  ownHash: string;
  files: number;
}

/**
 * Identifies the mkma installMkma would copy (and that builds the images): mkma's own files
 * (package.json, bin, dist, init/templates, init/unpack, persist/default.rules) by content, and
 * each production dependency by its package.json (name and version) and the path, mode and
 * size of each of its files. Not their contents: npm gives every file the same mtime, and
 * reading all ~5 000 files of node_modules costs about 0.2 s per build; a dependency's files
 * change with its version, which its package.json carries. Computed once per process.
 */
export function mkmaFingerprint(root = packageRoot()): MkmaFingerprint {
  if (fingerprintMemo?.root === root) return fingerprintMemo.value;
  const all = createHash('sha256');
  const own = createHash('sha256');
  let files = 0;
  const sources = mkmaSources(root);
  const ownParts = new Set(MKMA_PARTS);
  for (const s of sources) {
    const isOwn = ownParts.has(s.rel);
    const walk = (p: string, rel: string) => {
      if (s.skip(p)) return;
      const st = fs.lstatSync(p);
      let line: string;
      if (st.isDirectory()) {
        line = `d ${rel} ${st.mode}\n`;
        all.update(line);
        if (isOwn) own.update(line);
        for (const e of fs.readdirSync(p).sort()) walk(path.join(p, e), `${rel}/${e}`);
        return;
      }
      files++;
      if (st.isSymbolicLink()) line = `l ${rel} ${fs.readlinkSync(p)}\n`;
      else if (isOwn || path.basename(p) === 'package.json') {
        line = `f ${rel} ${st.mode} ${st.size} ${createHash('sha256').update(fs.readFileSync(p)).digest('hex')}\n`;
      } else line = `f ${rel} ${st.mode} ${st.size}\n`;
      all.update(line);
      if (isOwn) own.update(line);
    };
    walk(s.from, s.rel);
  }
  const value = { hash: all.digest('hex'), ownHash: own.digest('hex'), files };
  fingerprintMemo = { root, value };
  return value;
}

/**
 * Copies mkma (compiled code, boot templates, production dependencies only) into
 * /usr/lib/mkma with a `mkma` command, so `mkma persist` works offline after boot. The
 * image's own nodejs package runs it.
 */
export function installMkma(chroot: string): { bytes: number } {
  const src = packageRoot();
  const dest = path.join(chroot, 'usr/lib/mkma/app');
  const sources = mkmaSources(src);
  fs.rmSync(dest, { recursive: true, force: true });
  fs.mkdirSync(dest, { recursive: true });
  let bytes = 0;
  for (const s of sources) {
    fs.cpSync(s.from, path.join(dest, s.rel), {
      recursive: true,
      preserveTimestamps: true,
      verbatimSymlinks: true,
      filter: (p) => {
        if (s.skip(p)) return false;
        const st = fs.lstatSync(p);
        if (st.isFile()) bytes += st.size;
        return true;
      },
    });
  }
  const bin = path.join(chroot, 'usr/local/bin/mkma');
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  fs.rmSync(bin, { force: true });
  fs.symlinkSync('/usr/lib/mkma/app/bin/mkma.js', bin);
  installBootGoodUnit(chroot);
  return { bytes };
}

export interface ConfigureReport {
  mkmaBytes: number;
}

/**
 * What configureSystem depends on besides the tree: the settings it applies, and the
 * contents it writes (so a new mkma that writes other contents runs it again).
 */
export function configureInputs(c: Config): Record<string, string> {
  return {
    hostname: c.hostname,
    'root password': createHash('sha256').update(JSON.stringify(c.rootPassword)).digest('hex'),
    'test hook': createHash('sha256').update(`${TEST_UNIT}\0${TEST_SCRIPT}\0${FSTAB}`).digest('hex'),
    'boot tuning': c.bootTuning ? createHash('sha256').update(BOOT_TUNING_CONTENTS).digest('hex') : 'off',
  };
}

const FSTAB = '# mkma: the root filesystem is a RAM overlay set up by the initramfs\n';

/** hostname, root password, fstab, the test hook: cheap, idempotent edits. */
export function configureSystem(c: Config, chroot: string): void {
  writeHostname(chroot, c.hostname);
  setRootPassword(chroot, c.rootPassword);
  // A RAM system has no fstab entries: the root is set up by the initramfs.
  writeIfChanged(path.join(chroot, 'etc/fstab'), FSTAB);
  // The distribution initrd symlinks point at files that never exist in an mkma image.
  for (const l of ['initrd.img', 'initrd.img.old']) fs.rmSync(path.join(chroot, l), { force: true });
  installTestHook(chroot);
  // last: the needs-update stamps carry /usr's mtime as the presets left it
  if (c.bootTuning) applyBootTuning(chroot);
  else removeBootTuning(chroot);
}

export function configure(c: Config, chroot: string): ConfigureReport {
  configureSystem(c, chroot);
  const mkmaBytes = c.installMkma ? installMkma(chroot).bytes : 0;
  return { mkmaBytes };
}
