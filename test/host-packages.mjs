#!/usr/bin/env node
// The host packages `npm test` needs (test/host-packages.txt): checked before the tests run
// (`pretest`), every missing one named in one message with the apt-get line; installed with
// --install (`npm run setup`, and .ci/run: the same list, so the two cannot drift).
// Plain JavaScript: it runs before anything is compiled.
//   node test/host-packages.mjs            check; exit 1 naming what is missing
//   node test/host-packages.mjs --install  apt-get install what is missing (root)
//   node test/host-packages.mjs --list     the packages, one per line
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const LIST = path.join(path.dirname(fileURLToPath(import.meta.url)), 'host-packages.txt');

/** The packages of test/host-packages.txt (comments and blank lines left out). */
export function hostPackages(text = fs.readFileSync(LIST, 'utf8')) {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean);
}

/** The host's own architecture (dpkg's), e.g. amd64. */
function nativeArch() {
  return spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout?.trim() ?? '';
}

/** The foreign architectures `pkgs` name (`libzstd-dev:arm64` → arm64), other than the host's. */
export function foreignArches(pkgs, native = nativeArch()) {
  return [...new Set(pkgs.filter((p) => p.includes(':')).map((p) => p.slice(p.indexOf(':') + 1)))].filter((a) => a !== native);
}

/** Those foreign architectures dpkg does not know yet (`dpkg --add-architecture` first). */
export function missingArches(pkgs) {
  const known = spawnSync('dpkg', ['--print-foreign-architectures'], { encoding: 'utf8' }).stdout?.split('\n') ?? [];
  return foreignArches(pkgs).filter((a) => !known.includes(a));
}

/** Those of `pkgs` dpkg does not have installed ("ii"); null when there is no dpkg-query. */
export function missingPackages(pkgs) {
  // ${binary:Package}: `name` or `name:arch` (multi-arch packages, and any foreign one), so a
  // `libzstd-dev:arm64` line is told apart from the host's libzstd-dev
  const r = spawnSync('dpkg-query', ['-W', '-f', '${binary:Package} ${db:Status-Abbrev}\\n', ...pkgs], { encoding: 'utf8' });
  if (r.error) return null;
  const native = nativeArch();
  const installed = new Set();
  for (const [name, status] of r.stdout.split('\n').map((l) => l.split(' '))) {
    if (!status?.startsWith('ii')) continue;
    installed.add(name);
    if (name.endsWith(`:${native}`)) installed.add(name.slice(0, -native.length - 1));
  }
  return pkgs.filter((p) => !installed.has(p));
}

export function installLine(missing) {
  return `apt-get install --no-install-recommends ${missing.join(' ')}`;
}

function main(args) {
  const pkgs = hostPackages();
  if (args.includes('--list')) {
    process.stdout.write(pkgs.join('\n') + '\n');
    return 0;
  }
  const missing = missingPackages(pkgs);
  if (missing === null) {
    process.stderr.write(`npm test: cannot check the host packages (no dpkg-query: not Debian?); they are listed in ${LIST}\n`);
    return 0;
  }
  const root = process.getuid?.() === 0;
  if (args.includes('--install')) {
    if (!missing.length) return 0;
    if (!root) {
      process.stderr.write(`npm run setup: installing packages needs root: sudo npm run setup\n`);
      return 1;
    }
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    for (const arch of missingArches(missing)) {
      const r = spawnSync('dpkg', ['--add-architecture', arch], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0) return r.status ?? 1;
    }
    for (const cmd of [
      ['apt-get', ['update', '-q']],
      ['apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing]],
    ]) {
      const r = spawnSync(cmd[0], cmd[1], { stdio: ['ignore', 'inherit', 'inherit'], env });
      if (r.status !== 0) return r.status ?? 1;
    }
    return 0;
  }
  const problems = [];
  const arches = missingArches(missing);
  if (arches.length)
    problems.push(`first add the architecture(s): ${arches.map((a) => `dpkg --add-architecture ${a}`).join('; ')}; apt-get update`);
  if (missing.length) {
    problems.push(
      `it needs these Debian packages, not installed here: ${missing.join(' ')}`,
      `install them with: ${installLine(missing)}   (or: sudo npm run setup)`,
    );
  }
  // the integration tests mount filesystems and chroot; the e2e tests build an image
  if (!root) problems.push('it needs root (sudo npm test)');
  if (!problems.length) return 0;
  process.stderr.write(`npm test cannot run on this machine:\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
  return 1;
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
