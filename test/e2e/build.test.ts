// `mkma build` of the minimal test image (built once by global-setup.ts), checked with the
// classic tools a user would reach for: GNU cpio and the zstd CLI.
import { describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BootstrapSteps } from '../../builder/bootstrap-steps.js';
import { readManifest } from '../../format/reader.js';
import { IMAGE_OUT, MKMA, TEST_CONFIG } from '../helpers/paths.js';

const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 64 << 20 });
const listing = (file: string) => sh(`zstd -dc ${file} | cpio -tv --quiet`);

describe('mkma build (minimal test image)', () => {
  const base = path.join(IMAGE_OUT, 'base.cpio.zst');
  const initrd = path.join(IMAGE_OUT, 'initramfs.cpio.zst');

  test('outputs exist and mkma.json describes them', () => {
    const info = JSON.parse(fs.readFileSync(path.join(IMAGE_OUT, 'mkma.json'), 'utf8'));
    expect(info.hostname).toBe('mkma-test');
    expect(info.kernelVersion).toMatch(/^\d+\.\d+/);
    for (const k of ['base', 'initramfs', 'kernel'] as const) {
      const o = info.outputs[k];
      expect(fs.statSync(o.path).size).toBe(o.bytes);
      expect(sh(`sha256sum ${o.path}`).split(' ')[0]).toBe(o.sha256);
    }
    expect(info.outputs.base.unpackedBytes).toBeGreaterThan(info.outputs.base.bytes);
    expect(info.configHash).toMatch(/^[0-9a-f]{64}$/);
    expect(info.cmdline).toMatch(/^mkma_storage_device=\S+ mkma_images_path=\S+$/);
  });

  test("what holds secrets is root's only: base.cpio.zst and mkma.json 0600, the cache 0700", () => {
    // the base holds /etc/shadow (and whatever keys and users' files the image has)
    const mode = (p: string) => fs.statSync(p).mode & 0o777;
    expect(mode(base)).toBe(0o600);
    expect(mode(path.join(IMAGE_OUT, 'mkma.json'))).toBe(0o600);
    expect(mode(path.join(IMAGE_OUT, '.cache'))).toBe(0o700);
    // the initramfs (busybox, modules, the init) and the kernel hold nothing secret
    expect(mode(initrd) & 0o004).toBe(0o004);
  });

  test("the real mmdebstrap's full output is in OUT/.cache/logs/00-bootstrap.log (0600), with each of its steps", () => {
    const log = path.join(IMAGE_OUT, '.cache/logs/00-bootstrap.log');
    const result = JSON.parse(fs.readFileSync(path.join(IMAGE_OUT, 'build-result.json'), 'utf8')) as {
      stages: Array<{ stage: string; status: string }>;
    };
    const bootstrapped = result.stages.find((s) => s.stage === 'bootstrap')?.status === 'ran';
    // a tree reused from an older mkma's cache may have no log; a bootstrap of this run must
    if (!bootstrapped && !fs.existsSync(log)) return;
    expect(fs.statSync(log).mode & 0o777).toBe(0o600);
    const text = fs.readFileSync(log, 'utf8');
    // apt's and dpkg's own lines (mmdebstrap --verbose), and mmdebstrap's phases as BootstrapSteps reads them
    expect(text).toMatch(/^Setting up systemd /m);
    expect(text).toMatch(/^I: success in [\d.]+ seconds$/m);
    const steps = new BootstrapSteps();
    for (const l of text.split('\n')) steps.line(l);
    expect(steps.steps).toEqual(expect.arrayContaining(['downloading packages', 'installing the remaining packages']));
  });

  test('zstd -t accepts both images', () => {
    expect(spawnSync('zstd', ['-tq', base, initrd]).status).toBe(0);
  });

  test('base.cpio.zst holds /sbin/init, setuid binaries with their mode, and no build-time junk', () => {
    const list = listing(base);
    // trixie: /sbin is a symlink to usr/sbin, init a symlink to systemd
    expect(list).toMatch(/^l\S+ .* usr\/sbin\/init -> /m);
    expect(list).toMatch(/^lrwxrwxrwx .* sbin -> usr\/sbin$/m);
    expect(list).toMatch(/^-rwsr-xr-x\s+\d+\s+root\s+root\s+\d+ .* usr\/bin\/passwd$/m);
    expect(list).toMatch(/^-rwsr-xr-x .* usr\/bin\/su$/m);
    expect(list).toMatch(/^drwxr-xr-x .* proc$/m);
    expect(list).not.toMatch(/ proc\/\S/);
    expect(list).not.toMatch(/ dev\/\S/);
    expect(list).not.toMatch(/ var\/lib\/apt\/lists\/\S/);
    expect(list).toMatch(/^drwxrwxrwt .* tmp$/m);
  });

  test('a file capability is recorded in the manifest (newc cannot hold xattrs)', () => {
    const m = readManifest(base);
    const capped = m.xattrs.find((r) => r.path === 'usr/bin/mtr-packet');
    expect(capped).toBeDefined();
    expect(capped!.attrs.map(([n]) => n)).toContain('security.capability');
    expect(m.kind).toBe('base');
    expect(m.shards.length).toBeGreaterThan(1);
  });

  test('the initramfs holds /init, busybox, zstd with its libraries, and modules with their dependencies', () => {
    const list = listing(initrd);
    expect(list).toMatch(/^-rwxr-xr-x .* init$/m);
    expect(list).toMatch(/ usr\/bin\/busybox$/m);
    expect(list).toMatch(/ usr\/bin\/zstd$/m);
    expect(list).toMatch(/ usr\/bin\/setfattr$/m);
    expect(list).toMatch(/ usr\/lib\/x86_64-linux-gnu\/libc\.so\.6$/m);
    expect(list).toMatch(/ usr\/lib\/x86_64-linux-gnu\/liblzma\.so\.5(\.\S+)?$/m);
    expect(list).toMatch(/^crw------- .* dev\/console$/m);
    // ext4 and what modules.dep says it needs
    for (const m of ['ext4', 'jbd2', 'mbcache', 'crc16', 'virtio_blk', 'overlay']) {
      expect(list).toMatch(new RegExp(` usr/lib/modules/mkma/${m}\\.ko$`, 'm'));
    }
    const init = sh(`zstd -dc ${initrd} | cpio -i --quiet --to-stdout init`);
    // dependencies load before their dependents
    const fsCase = init.split('\n').find((l) => /^\s*ext4\)/.test(l))!;
    expect(fsCase).toMatch(/'.*\bjbd2\b.*\bmbcache\b.*\bext4'/);
  });

  const rebuild = (...args: string[]) => rebuildWith(TEST_CONFIG, ...args);
  const rebuildWith = (config: string, ...args: string[]) => {
    const r = spawnSync('node', [MKMA, 'build', ...args, '--config', config, '--out', IMAGE_OUT, '--json'], {
      encoding: 'utf8',
      env: { ...process.env, MKMA_QEMU_TEST: '' },
    });
    expect(r.status).toBe(0);
    const result = JSON.parse(r.stdout) as {
      bootstrap: string;
      timings: Record<string, number>;
      stages: Array<{ stage: string; status: string; reason?: string }>;
      outputs: Record<string, { path: string; bytes: number; sha256: string }>;
    };
    const status = Object.fromEntries(result.stages.map((s) => [s.stage, s.status]));
    const reason = Object.fromEntries(result.stages.map((s) => [s.stage, s.reason ?? '']));
    return { result, status, reason };
  };
  const sha = (file: string) => sh(`sha256sum ${file}`).split(' ')[0];

  test("a root password given as a crypt hash: in the base's /etc/shadow, not in mkma.json", () => {
    const hash = '$6$mkmae2etest$a593SISIcOM6p52xQZjPiBFnDm.KtpD/i/13r5GjrxaspwP09EeC.sfRJGztL6niSzOdiQyWSF6gtw.Xl18hW.';
    const config = path.join(IMAGE_OUT, '..', 'e2e-hashed.toml');
    fs.writeFileSync(config, fs.readFileSync(TEST_CONFIG, 'utf8').replace(/^root_password = .*$/m, `root_password = "${hash}"`));
    const hashed = rebuildWith(config);
    expect(hashed.status.configure).toBe('ran');
    expect(sh(`zstd -dc ${base} | cpio -i --quiet --to-stdout etc/shadow`)).toContain(`root:${hash}:`);
    const info = fs.readFileSync(path.join(IMAGE_OUT, 'mkma.json'), 'utf8');
    expect(info).not.toContain('mkmae2etest');
    expect((JSON.parse(info) as { config: Record<string, string> }).config.root_password).toBe('a crypt hash (not recorded)');
    expect(fs.statSync(base).mode & 0o777).toBe(0o600);
    // back to the test image's own password (the other tests use this image)
    rebuild();
    expect(sh(`zstd -dc ${base} | cpio -i --quiet --to-stdout etc/shadow`)).not.toContain(hash);
  });

  test('running build again with the same configuration reuses the bootstrapped tree', () => {
    const { result } = rebuild();
    expect(result.bootstrap).toBe('reused');
    expect(result.timings.bootstrap).toBeLessThan(1);
  });

  test('a second unchanged build reuses every stage, and says why; the outputs are the ones recorded', () => {
    const { result, status, reason } = rebuild();
    expect(status).toEqual({ bootstrap: 'reused', configure: 'reused', 'pack base': 'reused', initramfs: 'reused', kernel: 'reused' });
    expect(reason.configure).toMatch(/^inputs unchanged/);
    expect(reason['pack base']).toBe('inputs unchanged, base.cpio.zst as recorded');
    for (const k of ['pack base', 'initramfs', 'configure']) expect(result.timings[k]).toBeLessThan(1);
    for (const o of Object.values(result.outputs)) {
      expect(fs.statSync(o.path).size).toBe(o.bytes);
      expect(sha(o.path)).toBe(o.sha256);
    }
    const info = JSON.parse(fs.readFileSync(path.join(IMAGE_OUT, 'mkma.json'), 'utf8'));
    expect(info.outputs.base.sha256).toBe(result.outputs.base.sha256);
  });

  test('a new hostname re-runs configure and re-packs the base, without a bootstrap; a missing output is made again', () => {
    const other = rebuild('mkma-test-renamed');
    expect(other.status).toEqual({ bootstrap: 'reused', configure: 'ran', 'pack base': 'ran', initramfs: 'reused', kernel: 'reused' });
    expect(other.reason.configure).toBe('settings: hostname changed');
    expect(other.reason['pack base']).toBe('tree changed');
    expect(sh(`zstd -dc ${base} | cpio -i --quiet --to-stdout etc/hostname`)).toBe('mkma-test-renamed\n');
    expect(sha(base)).toBe(other.result.outputs.base.sha256);
    // back to the test image's hostname (the boot tests use this image), with vmlinuz deleted
    fs.rmSync(path.join(IMAGE_OUT, 'vmlinuz'));
    const back = rebuild();
    expect(back.status).toEqual({ bootstrap: 'reused', configure: 'ran', 'pack base': 'ran', initramfs: 'reused', kernel: 'ran' });
    expect(back.reason.kernel).toBe('vmlinuz is missing');
    expect(sh(`zstd -dc ${base} | cpio -i --quiet --to-stdout etc/hostname`)).toBe('mkma-test\n');
    expect(sha(path.join(IMAGE_OUT, 'vmlinuz'))).toBe(back.result.outputs.kernel.sha256);
  });
});
