// `npm test` on a clean Debian (issue 15): its first step, test/host-packages.mjs, run on a
// Debian system that has nothing but what mmdebstrap installed and the node binary, must name
// every package of test/host-packages.txt it lacks in one message, with the line that installs
// them, and fail. The clean system is the test image's bootstrapped tree (Debian minbase, as
// test/e2e/global-setup.ts built it) under an overlayfs, so nothing is written to it; its
// own dpkg database says what is installed, read here without dpkg.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IMAGE_OUT, REPO } from '../helpers/paths.js';

/** Installed packages by dpkg's status file: `name` for the native architecture and all, else `name:arch`. */
function installedPackages(root: string, native: string): Set<string> {
  const out = new Set<string>();
  for (const stanza of fs.readFileSync(path.join(root, 'var/lib/dpkg/status'), 'utf8').split(/\n\n+/)) {
    const field = (k: string) => new RegExp(`^${k}: (.*)$`, 'm').exec(stanza)?.[1];
    const name = field('Package');
    if (!name || field('Status') !== 'install ok installed') continue;
    const arch = field('Architecture');
    out.add(arch === native || arch === 'all' ? name : `${name}:${arch}`);
  }
  return out;
}

describe('npm test on a clean Debian with only node added', () => {
  let tmp: string;
  let root: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-clean-host-'));
    root = path.join(tmp, 'root');
    for (const d of ['upper', 'work', 'root']) fs.mkdirSync(path.join(tmp, d));
    const lower = path.join(IMAGE_OUT, 'chroot');
    const m = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${tmp}/upper,workdir=${tmp}/work`, root], {
      encoding: 'utf8',
    });
    expect(m.stderr).toBe('');
    // the node binary (its libraries are Debian's own: libstdc++ comes with apt) and the check
    fs.copyFileSync(process.execPath, path.join(root, 'usr/local/bin/node'));
    fs.chmodSync(path.join(root, 'usr/local/bin/node'), 0o755);
    fs.mkdirSync(path.join(root, 'mkma/test'), { recursive: true });
    for (const f of ['host-packages.mjs', 'host-packages.txt'])
      fs.copyFileSync(path.join(REPO, 'test', f), path.join(root, 'mkma/test', f));
  });
  afterAll(() => {
    if (root) spawnSync('umount', [root]);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  const check = (user?: string) =>
    spawnSync('chroot', [...(user ? [`--userspec=${user}`] : []), root, '/usr/local/bin/node', '/mkma/test/host-packages.mjs'], {
      encoding: 'utf8',
      env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' },
    });

  test('as root: exit 1 and one message that names every missing package and the apt-get line', () => {
    const native = spawnSync('chroot', [root, 'dpkg', '--print-architecture'], { encoding: 'utf8' }).stdout.trim();
    expect(native).toBe('amd64');
    const wanted = fs
      .readFileSync(path.join(REPO, 'test/host-packages.txt'), 'utf8')
      .split('\n')
      .map((l) => l.replace(/#.*/, '').trim())
      .filter(Boolean);
    const installed = installedPackages(root, native);
    const missing = wanted.filter((p) => !installed.has(p));
    // a clean system lacks most of them (QEMU, mmdebstrap, shellcheck, gcc…), not all (util-linux)
    expect(missing).toEqual(expect.arrayContaining(['mmdebstrap', 'qemu-system-x86', 'shellcheck', 'tmux', 'gcc', 'openssh-client']));
    expect(missing).not.toContain('util-linux');
    const r = check();
    process.stderr.write(`[clean-host] node test/host-packages.mjs in a clean Debian (exit ${r.status}):\n${r.stderr}`);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      [
        'npm test cannot run on this machine:',
        '  first add the architecture(s): dpkg --add-architecture arm64; apt-get update',
        `  it needs these Debian packages, not installed here: ${missing.join(' ')}`,
        `  install them with: apt-get install --no-install-recommends ${missing.join(' ')}   (or: sudo npm run setup)`,
        '',
      ].join('\n'),
    );
  });

  test('as another user: the same message, and that it needs root', () => {
    const r = check('65534:65534');
    expect(r.status).toBe(1);
    expect(
      r.stderr
        .split('\n')
        .filter((l) => l.startsWith('  '))
        .pop(),
    ).toBe('  it needs root (sudo npm test)');
  });
});
