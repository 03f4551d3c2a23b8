// Boot the test image in QEMU (TCG) with a persistence layer prepared here and a corrupt one
// beside it: multi-user is reached, the layer is applied (added file, deleted base file,
// capabilities), and the corrupt layer is skipped with its name on the console.
import { describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { collectHardlinks, packEntries, walkTree } from '../../format/tree.js';
import { XattrReader } from '../../format/xattrs.js';
import { ArchiveWriter } from '../../format/writer.js';
import { describeSmoke, smokeBoot, type SmokeResult } from '../../qemu/smoke.js';
import { IMAGE_OUT } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';

const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

/** A layer as `mkma persist` would write it, from a staging "upperdir". */
async function writeLayer(upper: string, out: string, deleted: string[]): Promise<void> {
  const w = new ArchiveWriter(out, { kind: 'layer', level: 3, mode: 0o600 });
  const x = new XattrReader(upper);
  await packEntries(w, walkTree(upper), collectHardlinks(walkTree(upper)), (e) => x.add(e.rel));
  for (const r of (await x.finish()).records) w.addXattrs(r);
  for (const d of deleted) w.addDeleted(d);
  await w.finish();
}

describe('boot into RAM (QEMU, TCG)', () => {
  const dir = ownWorkDir('e2e-boot');
  const images = path.join(dir, 'images');
  let result: SmokeResult;

  test('boots to multi-user with a layer applied and a corrupt layer skipped', async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(images, { recursive: true });
    fs.linkSync(path.join(IMAGE_OUT, 'base.cpio.zst'), path.join(images, 'base.cpio.zst'));

    // Layer 1: adds a file and a binary with a capability, deletes a base file.
    const upper = path.join(dir, 'upper');
    fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
    fs.mkdirSync(path.join(upper, 'usr/local/bin'), { recursive: true });
    fs.writeFileSync(path.join(upper, 'etc/mkma-e2e-added'), 'hello from a layer\n');
    fs.copyFileSync('/bin/true', path.join(upper, 'usr/local/bin/captrue'));
    sh(`setcap cap_sys_time+ep ${upper}/usr/local/bin/captrue`);
    await writeLayer(upper, path.join(images, 'persistence.20260101T000000Z.cpio.zst'), ['etc/issue.net']);

    // Layer 2 (later in order): corrupt in the middle of its data; must be skipped whole.
    const upper2 = path.join(dir, 'upper2');
    fs.mkdirSync(path.join(upper2, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(upper2, 'etc/mkma-e2e-corrupt'), 'x'.repeat(200000));
    const corrupt = path.join(images, 'persistence.20260102T000000Z.cpio.zst');
    await writeLayer(upper2, corrupt, ['etc/hostname']);
    const fd = fs.openSync(corrupt, 'r+');
    fs.writeSync(fd, Buffer.from('garbage!garbage!'), 0, 16, 40);
    fs.closeSync(fd);

    // What the guest checks, printed on the console by the test hook.
    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(
      path.join(data, 'run.sh'),
      [
        'test -f /etc/mkma-e2e-added && echo "added: $(cat /etc/mkma-e2e-added)"',
        'test -e /etc/issue.net || echo "deleted: issue.net gone"',
        'test -e /etc/mkma-e2e-corrupt || echo "corrupt: not applied"',
        'echo "hostname: $(cat /etc/hostname)"',
        'echo "cap: $(getcap /usr/local/bin/captrue)"',
        'echo "basecap: $(getcap /usr/bin/mtr-packet)"',
        'echo "root: $(findmnt -n -o FSTYPE /)"',
        'test -d /overlay/fresh && echo "upper: visible"',
      ].join('\n') + '\n',
    );
    result = await smokeBoot({
      out: IMAGE_OUT,
      imagesDir: images,
      reporter: createReporter({ quiet: true }),
      env: { MKMA_QEMU_ACCEL: 'tcg' },
      fresh: true,
      testDataDir: data,
      timeoutSec: 480,
      logPath: path.join(dir, 'console.log'),
    });
    process.stderr.write(`\n${describeSmoke(result)}\n`);
    expect(result.reason).toBe(result.ok ? result.reason : 'passed');
    expect(result.ok).toBe(true);
    const out = result.log;
    expect(out).toMatch(/MKMA-TEST: multi-user reached uptime=/);
    expect(out).toMatch(/phase layer-applied persistence\.20260101T000000Z\.cpio\.zst/);
    expect(out).toMatch(/LAYER SKIPPED persistence\.20260102T000000Z\.cpio\.zst: .*(zstd|corrupt)/i);
    expect(out).toMatch(/phase layers-done 1 applied, 1 skipped/);
    expect(out).toMatch(/MKMA-TEST-OUT: added: hello from a layer/);
    expect(out).toMatch(/MKMA-TEST-OUT: deleted: issue.net gone/);
    expect(out).toMatch(/MKMA-TEST-OUT: corrupt: not applied/);
    expect(out).toMatch(/MKMA-TEST-OUT: hostname: mkma-test/);
    expect(out).toMatch(/MKMA-TEST-OUT: cap: \/usr\/local\/bin\/captrue cap_sys_time=ep/);
    expect(out).toMatch(/MKMA-TEST-OUT: basecap: \/usr\/bin\/mtr-packet cap_net_raw=ep/);
    expect(out).toMatch(/MKMA-TEST-OUT: root: overlay/);
    expect(out).toMatch(/MKMA-TEST-OUT: upper: visible/);
  }, 600_000);

  test('the console log carries the boot phase timings', () => {
    expect(result).toBeDefined();
    const t = result.timings;
    const names = t.phases.map((p) => p.name);
    for (const n of ['start', 'device-found', 'unpack-base', 'base-unpacked', 'layer-applied', 'layers-done', 'switch-root']) {
      expect(names).toContain(n);
    }
    expect(t.kernelToInit).toBeGreaterThan(0);
    expect(t.multiUser).toBeGreaterThan(t.switchRoot!);
  });
});
