// One list of the host packages the tests need (test/host-packages.txt): .ci/run installs it
// through the same script that `npm test` checks it with, and it holds every package of mkma's
// own host-tool tables (the tests run all of them).
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BUILD_TOOLS, FAST_BOOT_PACKAGES, INSTALL_TOOLS, QEMU_TOOLS } from '../../lib/hosttools.js';
import { REPO } from '../helpers/paths.js';

const script = path.join(REPO, 'test/host-packages.mjs');
const list = () => spawnSync(process.execPath, [script, '--list'], { encoding: 'utf8' }).stdout.trim().split('\n');

describe('the host packages of the tests', () => {
  test('.ci/run installs them with the script npm test checks them with, and names no package of its own', () => {
    const ci = fs.readFileSync(path.join(REPO, '.ci/run'), 'utf8');
    expect(ci).toMatch(/^node test\/host-packages\.mjs --install$/m);
    expect(ci).not.toMatch(/apt-get install/);
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.pretest).toBe('node test/host-packages.mjs');
    expect(pkg.scripts.setup).toBe('node test/host-packages.mjs --install');
  });

  test("the list holds every package of mkma's host-tool tables, once each", () => {
    const pkgs = list();
    expect(new Set(pkgs).size).toBe(pkgs.length);
    const needed = [...BUILD_TOOLS, ...QEMU_TOOLS, ...INSTALL_TOOLS].map((t) => t.pkg).concat(FAST_BOOT_PACKAGES);
    // losetup's package "mount" is essential in Debian: on every system
    expect(needed.filter((p) => p !== 'mount' && !pkgs.includes(p))).toEqual([]);
  });

  test('a missing package is named with the apt-get line, all in one message (exit 1)', () => {
    // a PATH whose dpkg-query reports only the first package as installed
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-dpkg-'));
    try {
      const first = list()[0];
      fs.writeFileSync(path.join(bin, 'dpkg-query'), `#!/bin/sh\necho "${first} ii "\n`, { mode: 0o755 });
      const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
      expect(r.status).toBe(1);
      const rest = list().slice(1);
      expect(r.stderr).toContain(`it needs these Debian packages, not installed here: ${rest.join(' ')}\n`);
      expect(r.stderr).toContain(`install them with: apt-get install --no-install-recommends ${rest.join(' ')}   (or: sudo npm run setup)`);
      expect(r.stderr.match(/npm test cannot run/g)).toHaveLength(1);
    } finally {
      fs.rmSync(bin, { recursive: true, force: true });
    }
  });
});
