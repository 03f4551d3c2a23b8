// The one build of the shipped console and ssh-server presets that two test files share:
// test/integration/presets.test.ts checks what it put into the base, test/e2e/presets-boot.test.ts
// boots it and logs in with OpenSSH. Whichever runs first builds (from the test image's bootstrap
// when there is one: test/helpers/seed-out.ts); the other finds every stage reused (a few
// seconds). Same configuration, presets, user and key in both, so mkma's cache can tell.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MKMA, REPO, TEST_CONFIG, WORK } from './paths.js';
import { seedFromTestImage, type Seeded } from './seed-out.js';

export const SHIPPED_OUT = path.join(WORK, 'presets-shipped');
/** the ssh-server preset's user (MKMA_SSH_USER) */
export const SSH_USER = 'mkmauser';
/** its key pair, kept between runs outside the build directory (a new key runs 20-user.toml again) */
export const SSH_KEY = path.join(WORK, 'presets-key', 'id_ed25519');

export interface ShippedBuild {
  status: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
  seeded: Seeded;
  publicKey: string;
  /** each stage's status, from --json */
  stages: Array<{ stage: string; status: string }>;
  /** what the build kept in OUT/.cache/snapshots, from --json */
  cache: { snapshots: number; bytes: number } | null;
}

/** The key pair, made once. */
export function sshKeyPair(): string {
  if (!fs.existsSync(SSH_KEY)) {
    fs.mkdirSync(path.dirname(SSH_KEY), { recursive: true, mode: 0o700 });
    const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'mkma-e2e', '-f', SSH_KEY], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  }
  return fs.readFileSync(`${SSH_KEY}.pub`, 'utf8').trim();
}

/** `mkma build --preset console --preset ssh-server` with the test image's configuration. */
export function buildShippedPresets(): ShippedBuild {
  const publicKey = sshKeyPair();
  const t0 = Date.now();
  const seeded = seedFromTestImage(SHIPPED_OUT);
  const r = spawnSync(
    process.execPath,
    [
      MKMA,
      'build',
      '--config',
      TEST_CONFIG,
      '--out',
      SHIPPED_OUT,
      '--json',
      // built once per run and never with a changed preset: copies of the tree between the
      // presets would only cost disk (~300 MB each on ext4, 1.5 GB in all)
      '--no-snapshots',
      '--preset',
      path.join(REPO, 'presets/console'),
      '--preset',
      path.join(REPO, 'presets/ssh-server'),
    ],
    {
      encoding: 'utf8',
      env: { ...process.env, MKMA_QEMU_TEST: '', MKMA_SSH_USER: SSH_USER, MKMA_SSH_KEY: publicKey },
      timeout: 1_500_000,
      maxBuffer: 64 << 20,
    },
  );
  const json = r.status === 0 ? (JSON.parse(r.stdout) as Pick<ShippedBuild, 'stages' | 'cache'>) : null;
  const stages = json?.stages ?? [];
  return {
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    seconds: (Date.now() - t0) / 1000,
    seeded,
    publicKey,
    stages: stages.map(({ stage, status }) => ({ stage, status })),
    cache: json?.cache ?? null,
  };
}

/** A file of the base the build wrote, as text. */
export function baseFile(out: string, file: string): string {
  return spawnSync('sh', ['-c', `zstd -dc '${out}/base.cpio.zst' | cpio -i --quiet --to-stdout '${file}'`], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  }).stdout;
}

/** The names in the base the build wrote. */
export function baseNames(out: string): string[] {
  return spawnSync('sh', ['-c', `zstd -dc '${out}/base.cpio.zst' | cpio -t --quiet`], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  }).stdout.split('\n');
}
