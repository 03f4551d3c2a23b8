// Figure 8: the arm64 image's boot phases (issue 16), info rows: init start → switch_root and
// kernel → multi-user, in qemu-system-aarch64 -M virt -cpu max,pauth=off under TCG, as
// `mkma qemu` boots it. Opt-in by what exists: it boots an arm64 image that is already built
// (MKMA_BENCH_ARM64_IMAGE, default .test-work/arm64/image, which test/e2e/arm64.test.ts makes)
// and never bootstraps one, so the quick CI bench never pays an arm64 bootstrap. Without one
// its rows are skipped, saying how to make one.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BASE_NAME, INITRAMFS_NAME, KERNEL_NAME } from '../format/names.js';
import { MACHINES } from '../qemu/machine.js';
import { bootQemu, MULTI_USER_MARKER, phaseTimings } from '../qemu/run.js';
import { imageArch } from '../qemu/smoke.js';
import { baseDisk } from './fig3-boot.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, skippedRow, type Row } from './report.js';
import { median } from './stats.js';
import { CACHE, HarnessError, log, REPO, rmrf } from './util.js';

export const ARM64_IMAGE_ENV = 'MKMA_BENCH_ARM64_IMAGE';
const DEFAULT_IMAGE = path.join(REPO, '.test-work', 'arm64', 'image');

export const figure: Figure = {
  id: 8,
  title: 'arm64 boot phases (QEMU aarch64, TCG; info, needs a built arm64 image)',
  async run(inp: Inputs): Promise<Row[]> {
    const image = process.env[ARM64_IMAGE_ENV] || DEFAULT_IMAGE;
    const have = [KERNEL_NAME, INITRAMFS_NAME, BASE_NAME].every((f) => fs.existsSync(path.join(image, f)));
    if (!have || imageArch(image) !== 'arm64') {
      const how = `no arm64 image in ${image}: make one with mkma build --arch arm64 --config test/fixtures/test-image-arm64.toml --out ${image} (or set ${ARM64_IMAGE_ENV})`;
      return [
        skippedRow(8, '8.init', 'arm64 boot: init start → switch_root', how),
        skippedRow(8, '8.multi-user', 'arm64 boot: kernel → multi-user', how),
      ];
    }
    const m = MACHINES.arm64;
    const work = path.join(CACHE, 'arm64-boot');
    rmrf(work);
    fs.mkdirSync(path.join(work, 'images'), { recursive: true });
    fs.copyFileSync(path.join(image, BASE_NAME), path.join(work, 'images', BASE_NAME));
    const { diskPath, append } = await baseDisk(work);
    const init: number[] = [];
    const multiUser: number[] = [];
    const runs = inp.runs(3, 1);
    for (let i = 0; i < runs; i++) {
      const logPath = path.join(work, `console-${i + 1}.log`);
      const r = await bootQemu({
        kernel: path.join(image, KERNEL_NAME),
        initrd: path.join(image, INITRAMFS_NAME),
        disks: [{ path: diskPath, readonly: true }],
        append,
        memoryMiB: 2048,
        cpus: 2,
        accel: 'tcg',
        machine: m.machine,
        qemuBinary: m.qemuBinary,
        cpu: m.tcgCpu,
        console: m.console,
        interactive: false,
        timeoutSec: 600 * m.timeoutScale,
        logPath,
        successMarker: MULTI_USER_MARKER,
      });
      const t = phaseTimings(r.log);
      if (t.kernelToInit === undefined || t.switchRoot === undefined)
        throw new HarnessError(`arm64 boot: no start/switch-root phase lines (${r.reason}); console log ${logPath}`);
      init.push((t.switchRoot - t.kernelToInit) * 1000);
      if (t.multiUser !== undefined) multiUser.push(t.multiUser * 1000);
      else log(`  arm64 boot ${i + 1} did not reach multi-user: ${r.reason}`);
    }
    const extractor = /phase unpack-base .*, with (.*)$/m.exec(fs.readFileSync(path.join(work, 'console-1.log'), 'utf8'))?.[1] ?? 'unknown';
    const note = `qemu-system-aarch64 -M virt -cpu ${m.tcgCpu}, TCG, 2048 MiB, 2 vCPUs, guest uptimes; extractor: ${extractor}`;
    return [
      ratioRow({
        figure: 8,
        id: '8.init',
        what: 'arm64 boot: init start → switch_root',
        unit: 'ms',
        mkma: median(init),
        reference: null,
        target: null,
        referenceLabel: '',
        note,
        samples: { mkma: init },
      }),
      ratioRow({
        figure: 8,
        id: '8.multi-user',
        what: 'arm64 boot: kernel → multi-user',
        unit: 'ms',
        mkma: multiUser.length ? median(multiUser) : null,
        reference: null,
        target: null,
        referenceLabel: '',
        note: multiUser.length === runs ? undefined : `multi-user reached in ${multiUser.length}/${runs} boots`,
        samples: { mkma: multiUser },
      }),
    ];
  },
};
