// Which base each layer was written on (manifest base_data_sha256, docs/FORMAT.md), end to end
// without QEMU: the init's image_data_sha256 under busybox (what it writes to boot.env), mkma
// persist --path recording the directory's base, mkma layers showing it, and mkma update
// warning about the layers of a stick written on another base than the new one (naming them,
// keeping them), with one quiet line for layers of unknown base.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { generateApplyScript } from '../../init/generate.js';
import { parsePartitionTable } from '../../install/layout.js';
import { BUSYBOX, makeBusyboxBin } from '../fixtures/layers.js';
import { fakeBuild, useScratchDir } from '../helpers/fake-build.js';
import { put } from '../helpers/files.js';
import { MKMA, WORK } from '../helpers/paths.js';

const TMP = path.join(WORK, 'base-identity');
const mkma = (args: string[]) =>
  spawnSync(process.execPath, [MKMA, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });

/** A base image of one tree (etc/version = `version`), as mkma build packs it. */
async function makeBase(file: string, version: string): Promise<string> {
  const src = path.join(TMP, `src-${version}`);
  put(src, 'etc/version', `${version}\n`);
  put(src, 'etc/hostname', 'alpha\n');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await packTree(src, file, { kind: 'base', level: 3 });
  return readManifest(file).dataSha256;
}

async function makeLayer(file: string, baseDataSha256?: string): Promise<void> {
  const up = fs.mkdtempSync(path.join(TMP, 'upper-'));
  put(up, 'etc/motd', 'hello\n');
  await packTree(up, file, { kind: 'layer', level: 3, baseDataSha256 });
}

useScratchDir(TMP);

describe('the base a layer is written on', () => {
  test("the init's image_data_sha256 (under busybox) reads the base's data_sha256 from its manifest; nothing for a non-image", async () => {
    const base = path.join(TMP, 'init', 'base.cpio.zst');
    const sha = await makeBase(base, 'one');
    // the init's layer code, its usage part replaced by one call
    const script = generateApplyScript('native').split('\n# usage: mkma-apply')[0] + '\nimage_data_sha256 "$1"\n';
    fs.writeFileSync(path.join(TMP, 'init', 'id.sh'), script);
    const bin = makeBusyboxBin(path.join(TMP, 'init'));
    const run = (file: string) =>
      spawnSync(BUSYBOX, ['sh', path.join(TMP, 'init', 'id.sh'), file], { encoding: 'utf8', env: { PATH: bin } });
    const r = run(base);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`${sha}\n`);
    const junk = path.join(TMP, 'init', 'junk');
    fs.writeFileSync(junk, 'MKMA-MANIFEST-LEN not a manifest at all, just bytes\n'.repeat(3));
    expect(run(junk)).toMatchObject({ status: 0, stdout: '' });
  });

  test('mkma persist --path records the base of the directory; mkma layers shows it (table and --json)', async () => {
    const images = path.join(TMP, 'persist', 'images');
    const sha = await makeBase(path.join(images, 'base.cpio.zst'), 'one');
    const upper = path.join(TMP, 'persist', 'upper');
    put(upper, 'etc/motd', 'changed\n');
    const r = mkma(['persist', '--yes', '--upper', upper, '--path', images, '--level', '1']);
    expect(r.status).toBe(0);
    const layer = fs.readdirSync(images).find((n) => n.startsWith('persistence.'))!;
    expect(readManifest(path.join(images, layer)).baseDataSha256).toBe(sha);
    const listing = JSON.parse(mkma(['layers', '--path', images, '--json']).stdout);
    expect(listing.baseDataSha256).toBe(sha);
    expect(listing.layers[0].baseDataSha256).toBe(sha);
    const table = mkma(['layers', '--path', images]).stdout;
    // a new layer of mkma persist is on trial until a boot with it is marked good
    expect(table.split('\n')[1]).toMatch(new RegExp(` on trial \\(3 tries left\\) +${sha.slice(0, 12)}$`));
    expect(table).not.toContain('(other)');
  });
});

describe('mkma update and the layers of the stick', () => {
  test('the layers written on another base are named in a warning and kept; unknown ones get one quiet line', async () => {
    const img = path.join(TMP, 'stick.img');
    const a = await makeBase(path.join(TMP, 'a.cpio.zst'), 'a');
    const alpha = fakeBuild(path.join(TMP, 'alpha'), 'alpha', 'x', fs.readFileSync(path.join(TMP, 'a.cpio.zst')));
    expect(mkma(['install', img, '--size', '400M', '--esp-size', '64M', '--yes', '--out', alpha]).status).toBe(0);
    // on the stick: a layer written on base a, and one of an older mkma (no base recorded)
    const onA = 'persistence.20261201T000000Z.cpio.zst';
    const old = 'persistence.20261101T000000Z.cpio.zst';
    await makeLayer(path.join(TMP, onA), a);
    await makeLayer(path.join(TMP, old));
    const offset = parsePartitionTable(spawnSync('sgdisk', ['--print', img], { encoding: 'utf8' }).stdout).find((p) => p.number === 3)!;
    for (const l of [onA, old]) {
      const w = spawnSync('debugfs', [
        '-w',
        '-R',
        `write ${path.join(TMP, l)} /images/alpha/${l}`,
        `${img}?offset=${offset.startSector * 512}`,
      ]);
      expect(w.status).toBe(0);
    }

    const b = await makeBase(path.join(TMP, 'b.cpio.zst'), 'b');
    expect(b).not.toBe(a);
    fakeBuild(alpha, 'alpha', 'x', fs.readFileSync(path.join(TMP, 'b.cpio.zst')));
    const r = mkma(['update', img, '--out', alpha]);
    expect(r.status).toBe(0);
    // one warning, naming the layer written on a (not the one of unknown base); the update went on
    const warnings = r.stderr.split('\n').filter((l) => /warning/i.test(l));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`1 layer(s) were written on another base than the new one: ${onA}. They are kept`);
    expect(r.stderr).toContain(`1 layer(s) of unknown base (written by an older mkma): ${old}`);
    expect(r.stdout).toMatch(/is now generation 2 \(previous: 1\), 2 layer\(s\) kept \(1 written on another base\)/);

    // the base back to a: the layer written on it is no longer named; --json says which is which
    fakeBuild(alpha, 'alpha', 'x', fs.readFileSync(path.join(TMP, 'a.cpio.zst')));
    // (the same bytes as generation 1 but a new generation: kernel and initramfs are new random bytes)
    const j = mkma(['update', img, '--out', alpha, '--json']);
    expect(j.status).toBe(0);
    expect(j.stderr).toBe('');
    expect(JSON.parse(j.stdout)).toMatchObject({ generation: 3, layersOnOtherBase: [], layersOfUnknownBase: [old] });
  }, 300_000);
});
