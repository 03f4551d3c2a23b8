// The benchmark's inputs and their cache (bench/cache/.work, see util.ts CACHE):
//   - the test image (.test-work/image; built with the test configuration when missing),
//   - a snapshot of its root filesystem (the tests rebuild .test-work/image at any time),
//   - the same tree twice (for the memory figure),
//   - generated upperdirs (upper-gen.ts) and layers written from them by persist's writer.
// Each cached item has a key file beside it; a changed key (another snapshot, another
// generator spec) rebuilds it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { baseExclude } from '../builder/base.js';
import { lastBootstrap } from '../builder/stages/bootstrap.js';
import { BASE_NAME, layerNameFor } from '../format/names.js';
import { packTree } from '../format/pack.js';
import { scanUpper } from '../persist/scan.js';
import { writeLayer } from '../persist/write.js';
import { runSync } from '../lib/run.js';
import { generateUpper, listLower, type LowerListing, type UpperSpec } from './upper-gen.js';
import { CACHE, countEntries, HarnessError, log, MKMA_BIN, rmrf, sh, TEST_CONFIG, TEST_IMAGE } from './util.js';

export interface BenchOptions {
  quick: boolean;
  /** --runs N, when given */
  runs: number | null;
}

export class Inputs {
  /** notes for the report (e.g. "the test image was built first") */
  readonly notes: string[] = [];
  private lowerListing: LowerListing | null = null;
  private snapshotKey: string | null = null;

  constructor(readonly o: BenchOptions) {}

  /** runs per contender: --runs, else the figure's default for the mode */
  runs(full: number, quick = 1): number {
    return this.o.runs ?? (this.o.quick ? quick : full);
  }

  get warmup(): number {
    return this.o.quick ? 0 : 1;
  }

  scratch(name: string): string {
    const d = path.join(CACHE, 'mnt', name);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  // --- the test image -------------------------------------------------------------------

  /** .test-work/image with chroot, base, initramfs and kernel; builds it when missing. */
  /**
   * The tests' image (.test-work/image), brought up to date once per run: `mkma build` of the
   * test configuration, which reuses the bootstrap when it is there, so that the initramfs
   * and base measured are those of the code being benchmarked, not of an older build.
   */
  testImage(): string {
    if (this.testImageReady) return TEST_IMAGE;
    const need = ['chroot/usr', BASE_NAME, 'initramfs.cpio.zst', 'vmlinuz', '.cache/stages.json'];
    const had = need.every((f) => fs.existsSync(path.join(TEST_IMAGE, f)));
    log(`${had ? 'updating' : 'building'} ${TEST_IMAGE} (mkma build --config test/fixtures/test-image.toml${had ? '' : ', ~1-2 min'})`);
    const t0 = Date.now();
    const r = runSync('node', [MKMA_BIN, 'build', '--quiet', '--config', TEST_CONFIG, '--out', TEST_IMAGE], {
      stdio: 'inherit',
      allowFailure: true,
    });
    if (!r.ok) throw new HarnessError(`building the test image failed (exit ${r.status})`);
    if (!had) this.notes.push(`the test image was missing and was built first (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    this.testImageReady = true;
    return TEST_IMAGE;
  }
  private testImageReady = false;

  // --- cache helpers ----------------------------------------------------------------------

  private keyFile(name: string): string {
    return path.join(CACHE, `${name}.key`);
  }

  /** CACHE/name, (re)built by `build(tmpPath)` when its key changed. */
  private async cached(name: string, key: string, build: (tmp: string) => Promise<void> | void): Promise<string> {
    const dest = path.join(CACHE, name);
    const kf = this.keyFile(name);
    if (fs.existsSync(dest) && fs.existsSync(kf) && fs.readFileSync(kf, 'utf8') === key) return dest;
    log(`preparing ${path.relative(process.cwd(), dest) || dest} …`);
    const t0 = Date.now();
    rmrf(kf);
    rmrf(dest);
    const tmp = `${dest}.tmp`;
    rmrf(tmp);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    await build(tmp);
    fs.renameSync(tmp, dest);
    fs.writeFileSync(kf, key);
    log(`  ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return dest;
  }

  // --- the root filesystem ----------------------------------------------------------------

  /** Identity of the test image's bootstrap: a fresh bootstrap makes a new snapshot. */
  private imageKey(): string {
    if (this.snapshotKey) return this.snapshotKey;
    const img = this.testImage();
    const key = lastBootstrap(img);
    if (!key) throw new HarnessError(`${img}: its build record names no bootstrap (build it again with --rebuild)`);
    this.snapshotKey = key;
    return this.snapshotKey;
  }

  /** A copy of .test-work/image/chroot (cp -a): stable while the tests rebuild theirs. */
  async rootfs(): Promise<string> {
    const key = this.imageKey();
    return this.cached('rootfs', key, (tmp) => {
      sh('cp', ['-a', path.join(this.testImage(), 'chroot'), tmp]);
    });
  }

  /** The root filesystem and a second, real copy of it under copy-2/: twice the tree. */
  async rootfs2x(): Promise<string> {
    const src = await this.rootfs();
    return this.cached('rootfs2x', `${this.imageKey()} 2x`, (tmp) => {
      sh('cp', ['-a', src, tmp]);
      sh('cp', ['-a', src, path.join(tmp, 'copy-2')]);
    });
  }

  /** The root filesystem and three real copies of it under copy-2/ … copy-4/: four times the tree. */
  async rootfs4x(): Promise<string> {
    const src = await this.rootfs();
    return this.cached('rootfs4x', `${this.imageKey()} 4x`, (tmp) => {
      sh('cp', ['-a', src, tmp]);
      for (const i of [2, 3, 4]) sh('cp', ['-a', src, path.join(tmp, `copy-${i}`)]);
    });
  }

  async lower(): Promise<LowerListing> {
    if (!this.lowerListing) this.lowerListing = listLower(await this.rootfs());
    return this.lowerListing;
  }

  /** base.cpio.zst packed from the snapshot as mkma build packs it (level 3, baseExclude). */
  async baseImage(): Promise<string> {
    const root = await this.rootfs();
    const dir = await this.cached('base', `${this.imageKey()} base-v1`, async (tmp) => {
      fs.mkdirSync(tmp);
      await packTree(root, path.join(tmp, BASE_NAME), { kind: 'base', level: 3, exclude: baseExclude });
    });
    return path.join(dir, BASE_NAME);
  }

  // --- generated upperdirs ----------------------------------------------------------------

  /** The main upper: full 10k files / 200 MB, --quick 2k files / 30 MB. */
  mainSpec(seed = 1, scale = 1): UpperSpec {
    const files = Math.round((this.o.quick ? 2000 : 10000) * scale);
    const bytes = Math.round((this.o.quick ? 30 : 200) * scale * 2 ** 20);
    return {
      seed,
      files,
      bytes,
      sizes: 'mixed',
      deleteFiles: Math.round(files * 0.03),
      deleteDirs: Math.max(1, Math.round(files / 500)),
      replaceDirs: Math.max(1, Math.round(files / 500)),
      symlinks: Math.round(files * 0.05),
      hardlinks: Math.round(files * 0.02),
      chmods: Math.round(files * 0.02),
      modify: Math.round(files * 0.02),
    };
  }

  async upper(name: string, specs: UpperSpec[]): Promise<string> {
    const root = await this.rootfs();
    const lower = await this.lower();
    const key = `${this.imageKey()} gen-v1 ${JSON.stringify(specs)}`;
    return this.cached(`uppers/${name}`, key, (tmp) => {
      generateUpper(root, lower, specs, tmp, this.scratch('gen'));
    });
  }

  /** The upper of figures 2 and 4. */
  async mainUpper(): Promise<string> {
    return this.upper(this.o.quick ? 'main-quick' : 'main', [this.mainSpec(1)]);
  }

  /** An upperdir of ~100k entries (20k in --quick) for the scan figure: small files. */
  async bigUpper(): Promise<{ dir: string; entries: number }> {
    return this.sizedUpper(this.o.quick ? 20000 : 100000);
  }

  /** An upperdir of about `target` entries, small files (figures 4 and 7). */
  async sizedUpper(target: number): Promise<{ dir: string; entries: number }> {
    const files = Math.round(target * 0.9);
    const spec: UpperSpec = {
      seed: 7,
      files,
      bytes: files * 600,
      sizes: 'small',
      deleteFiles: Math.round(target * 0.01),
      deleteDirs: 10,
      replaceDirs: 10,
      symlinks: Math.round(target * 0.04),
      hardlinks: Math.round(target * 0.005),
      chmods: Math.round(target * 0.005),
      modify: Math.round(target * 0.005),
    };
    const name = target === 100000 ? 'big' : target === 20000 ? 'big-quick' : `sized-${target}`;
    const dir = await this.upper(name, [spec]);
    return { dir, entries: countEntries(dir) };
  }

  /**
   * An images directory: the base plus one layer per upper, each written by persist's writer
   * (persist/write.ts) from a scan against the snapshot, named in the given order.
   */
  async imagesDir(name: string, uppers: string[], key: string): Promise<string> {
    const base = await this.baseImage();
    const lower = await this.rootfs();
    return this.cached(`images/${name}`, `${this.imageKey()} images-v2 ${key}`, async (tmp) => {
      fs.mkdirSync(tmp, { recursive: true });
      fs.copyFileSync(base, path.join(tmp, BASE_NAME));
      for (let i = 0; i < uppers.length; i++) {
        const scan = await scanUpper(uppers[i], lower);
        const now = new Date(Date.UTC(2030, 0, 1, 0, 0, 0) + i * 1000);
        // active, as layers are once a boot with them completed (persist writes them on trial,
        // and compaction, figure 9, takes active layers only)
        await writeLayer({ upper: uppers[i], scan, include: () => true, imagesDir: tmp, level: 3, now, fileName: layerNameFor(now) });
      }
    });
  }
}
