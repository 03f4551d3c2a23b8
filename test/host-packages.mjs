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

/** Those of `pkgs` dpkg does not have installed ("ii"); null when there is no dpkg-query. */
export function missingPackages(pkgs) {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Abbrev}\\n', ...pkgs], { encoding: 'utf8' });
  if (r.error) return null;
  const installed = new Set(
    r.stdout
      .split('\n')
      .map((l) => l.split(' '))
      .filter(([, status]) => status?.startsWith('ii'))
      .map(([name]) => name.replace(/:.*/, '')),
  );
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
