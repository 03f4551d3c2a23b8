// The image/layer format: the newc writer against GNU cpio, sharding, the manifest, the
// parser's error paths, and the layer order on both sides (TypeScript and the init's shell).
// Runs as root (chown, mknod).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  encodeManifestFrame,
  escapePath,
  FOOTER_SIZE,
  FOOTER_TAG,
  ManifestError,
  parseFooter,
  parseManifestBody,
  serializeManifestBody,
  SKIPPABLE_MAGIC,
  unescapePath,
  type Manifest,
} from '../../format/manifest.js';
import { sortLayerNames } from '../../format/names.js';
import {
  encodeHeader,
  NEWC_MAX_FILE_SIZE,
  NewcFormatError,
  NewcParser,
  NewcRangeError,
  S_IFREG,
  trailer,
  type NewcHeader,
} from '../../format/newc.js';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { collectHardlinks, FileTooLargeError, packEntries, walkTree } from '../../format/tree.js';
import { ArchiveWriter, VanishedError } from '../../format/writer.js';
import { BUSYBOX, layerFunctions, makeBusyboxBin, mkdir, mkfile, mkhardlink, mknode, mksymlink, noise } from '../fixtures/layers.js';
import { describeTree, readXattrs, treePath } from '../helpers/tree.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-format-'));
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

const CREATED = new Date('2026-11-22T02:15:00Z');
const Y2001 = 978_307_200 + 3600 * 24 * 180; // mid-2001

let BIN = '';
let FUNCS = '';
beforeAll(() => {
  BIN = makeBusyboxBin(path.join(TMP, 'busybox'));
  FUNCS = path.join(TMP, 'funcs.sh');
  fs.writeFileSync(FUNCS, layerFunctions());
});

/** Runs shell code under busybox with the init's functions sourced; PATH is busybox only. */
function bbsh(code: string, args: string[] = []) {
  return spawnSync(BUSYBOX, ['sh', '-c', `. "$MKMA_FUNCS"\n${code}`, 'sh', ...args], {
    env: { PATH: BIN, LC_ALL: 'C', MKMA_FUNCS: FUNCS, MKMA_TMP: TMP },
    maxBuffer: 64 << 20,
  });
}

const L = (s: string) => Buffer.from(s, 'latin1');

function parseAll(stream: Buffer): NewcHeader[] {
  const out: NewcHeader[] = [];
  const p = new NewcParser({ onEntry: (h) => out.push(h) });
  p.push(stream);
  p.end();
  return out;
}

// ---------------------------------------------------------------------------------------------

describe('newc writer round trip against GNU cpio', () => {
  const src = path.join(TMP, 'rt-src');
  const dest = path.join(TMP, 'rt-dest');
  const out = path.join(TMP, 'rt-out', 'base.cpio.zst');
  const HL = noise(5000, 7);
  const UTF8 = Buffer.from('ü-utf8 ✓').toString('latin1');
  let manifest: Manifest;
  let cpio: Buffer;
  let fileBytes = 0;

  beforeAll(async () => {
    fs.mkdirSync(src);
    fs.chmodSync(src, 0o755);
    mkfile(src, 'regular', 'hello\n');
    mkfile(src, 'empty', '');
    mkfile(src, 'setuid', 'su', { mode: 0o4755 });
    mkfile(src, 'setgid', 'sg', { mode: 0o2755, gid: 5 });
    mkfile(src, 'all-bits', 'x', { mode: 0o7777 });
    mkdir(src, 'sticky', { mode: 0o1777 });
    mkdir(src, 'setgid-dir', { mode: 0o2775, gid: 8 });
    mkfile(src, 'owned', 'owned', { uid: 1234, gid: 5678, mode: 0o640 });
    mkdir(src, 'owned-dir', { uid: 1234, gid: 5678, mode: 0o700 });
    mksymlink(src, 'owned-link', 'owned', { uid: 1234, gid: 5678 });
    mkfile(src, 'epoch', 'epoch', { mtime: 0 });
    mkfile(src, 'y2001', 'y2001', { mtime: Y2001 });
    mksymlink(src, 'link', 'regular');
    mksymlink(src, 'dangling', 'does/not/exist');
    mkfile(src, 'hl1', HL, { mode: 0o600, uid: 1234 });
    mkhardlink(src, 'hl1', 'sub/hl2');
    mkhardlink(src, 'hl1', 'hl3');
    mkfile(src, 'ehl1', '');
    mkhardlink(src, 'ehl1', 'ehl2');
    mknode(src, 'null', 'c', { major: 1, minor: 3, mode: 0o666 });
    mknode(src, 'loop', 'b', { major: 7, minor: 300, mode: 0o660 });
    mknode(src, 'fifo', 'p', { mode: 0o640 });
    for (const n of ['with space', 'new\nline', UTF8, 'bad\xffbyte', 'trail\n', 'back\\slash']) mkfile(src, n, `name ${n}`);
    mkfile(src, 'big', noise(3 << 20, 3));
    for (let i = 0; i < 200; i++) mkfile(src, `many/f${String(i).padStart(3, '0')}`, noise(1500, 1000 + i));
    mkdir(src, 'sub', { mtime: Y2001 });
    mkdir(src, 'many', { mtime: Y2001 + 1 });

    fs.mkdirSync(path.dirname(out));
    const r = await packTree(src, out, { kind: 'base', level: 3, shardBytes: 64 << 10, created: CREATED });
    manifest = r.manifest;
    fileBytes = r.fileBytes;
    cpio = execFileSync('zstd', ['-q', '-dc', out], { maxBuffer: 64 << 20 });
    fs.mkdirSync(dest);
    execFileSync('sh', ['-c', 'zstd -q -dc "$1" | (cd "$2" && cpio -idm --quiet)', 'sh', out, dest]);
  }, 60_000);

  test('GNU cpio -idm restores every entry: type, mode, owner, mtime, target, rdev, hardlinks', () => {
    // mtimes of regular files only: GNU cpio 2.13 sets a directory's mtime when it meets the
    // directory's entry, and the children extracted after it change it again; symlink mtimes
    // it does not restore at all.
    const want = describeTree(src, { skipRoot: true });
    expect(Object.keys(want)).toHaveLength(manifest.entries - 1);
    expect(describeTree(dest, { skipRoot: true })).toEqual(want);
    // spot checks with exact values
    const st = (rel: string) => fs.lstatSync(treePath(dest, rel));
    expect(st('setuid').mode & 0o7777).toBe(0o4755);
    expect(st('all-bits').mode & 0o7777).toBe(0o7777);
    expect(st('sticky').mode & 0o7777).toBe(0o1777);
    expect([st('owned').uid, st('owned').gid]).toEqual([1234, 5678]);
    expect([st('owned-link').uid, st('owned-link').gid]).toEqual([1234, 5678]);
    expect(st('epoch').mtimeMs).toBe(0);
    expect(st('y2001').mtimeMs).toBe(Y2001 * 1000);
    expect(fs.readlinkSync(treePath(dest, 'dangling')).toString()).toBe('does/not/exist');
    expect(st('null').rdev).toBe(fs.lstatSync(treePath(src, 'null')).rdev);
    expect(st('loop').rdev).toBe(fs.lstatSync(treePath(src, 'loop')).rdev);
    expect(st('fifo').isFIFO()).toBe(true);
    expect(fs.readFileSync(treePath(dest, 'bad\xffbyte')).equals(fs.readFileSync(treePath(src, 'bad\xffbyte')))).toBe(true);
    expect(fs.readFileSync(treePath(dest, 'big')).equals(noise(3 << 20, 3))).toBe(true);
  });

  test('hardlinks: data stored once, links share an inode after extraction', () => {
    // the 5000 data bytes appear exactly once in the cpio stream
    expect(cpio.indexOf(HL)).toBeGreaterThan(0);
    expect(cpio.indexOf(HL, cpio.indexOf(HL) + 1)).toBe(-1);
    const entries = parseAll(cpio);
    const group = entries.filter((e) => ['hl1', 'hl3', 'sub/hl2'].includes(e.name.toString()));
    expect(group.map((e) => [e.name.toString(), e.size, e.nlink])).toEqual([
      ['hl1', 0, 3],
      ['hl3', 0, 3],
      ['sub/hl2', 5000, 3],
    ]);
    expect(new Set(group.map((e) => e.ino)).size).toBe(1);
    const empties = entries.filter((e) => e.name.toString().startsWith('ehl'));
    expect(empties.map((e) => [e.name.toString(), e.size, e.nlink])).toEqual([
      ['ehl1', 0, 2],
      ['ehl2', 0, 2],
    ]);
    expect(empties[0].ino).toBe(empties[1].ino);
    // GNU cpio's own listing agrees
    const listing = execFileSync('sh', ['-c', 'zstd -q -dc "$1" | cpio -tv --quiet --numeric-uid-gid', 'sh', out]).toString('latin1');
    const hl = listing
      .split('\n')
      .filter((l) => / (hl1|hl3|sub\/hl2)$/.test(l))
      .map((l) => l.trim().split(/\s+/));
    expect(hl.map((f) => [f[f.length - 1], f[1], f[4]])).toEqual([
      ['hl1', '3', '0'],
      ['hl3', '3', '0'],
      ['sub/hl2', '3', '5000'],
    ]);
    const ino = (rel: string) => fs.statSync(treePath(dest, rel)).ino;
    expect(ino('hl3')).toBe(ino('hl1'));
    expect(ino('sub/hl2')).toBe(ino('hl1'));
    expect(fs.statSync(treePath(dest, 'hl1')).nlink).toBe(3);
    expect(ino('ehl2')).toBe(ino('ehl1'));
  });

  test('several shards, contiguous over DATA, each decompressing alone to whole entries', () => {
    expect(manifest.shards.length).toBeGreaterThanOrEqual(4);
    let pos = 0;
    for (const s of manifest.shards) {
      expect(s.offset).toBe(pos);
      expect(s.length).toBeGreaterThan(0);
      pos += s.length;
    }
    expect(pos).toBe(manifest.dataBytes);
    expect(fs.statSync(out).size).toBe(fileBytes);
    const parts: Buffer[] = [];
    for (const s of manifest.shards) {
      const r = spawnSync(
        'sh',
        ['-c', 'tail -c +"$2" "$1" | head -c "$3" | zstd -q -dc', 'sh', out, String(s.offset + 1), String(s.length)],
        {
          maxBuffer: 64 << 20,
        },
      );
      expect(r.status).toBe(0);
      // starts with a header and ends on an entry boundary: a trailer appended makes it complete
      expect(r.stdout.toString('latin1', 0, 6)).toBe('070701');
      const entries = parseAll(Buffer.concat([r.stdout, trailer()]));
      expect(entries.length).toBeGreaterThan(0);
      parts.push(r.stdout);
    }
    expect(Buffer.concat(parts).equals(cpio)).toBe(true);
  });

  test('zstd -t accepts the file; zstd -dc | cpio -t lists every entry (manifest frame skipped)', () => {
    expect(spawnSync('zstd', ['-q', '-t', out]).status).toBe(0);
    const entries = parseAll(cpio);
    expect(entries).toHaveLength(manifest.entries);
    const names = entries.map((e) => e.name.toString('latin1'));
    const listed = execFileSync('sh', ['-c', 'zstd -q -dc "$1" | cpio -t --quiet', 'sh', out]).toString('latin1');
    expect(listed).toBe(names.map((n) => n + '\n').join(''));
    // the archive holds exactly the tree
    const tree = Object.keys(describeTree(src)).map((k) => JSON.parse(k) as string);
    expect([...names].sort()).toEqual([...tree].sort());
  });

  test('the manifest read back from the file is the one written', () => {
    expect(readManifest(out)).toEqual(manifest);
    expect(manifest.kind).toBe('base');
    expect(manifest.created).toBe('2026-11-22T02:15:00Z');
    expect(manifest.dataBytes).toBe(fs.statSync(out).size - encodeManifestFrame(manifest).length);
  });
});

// ---------------------------------------------------------------------------------------------

describe('manifest', () => {
  const sample: Manifest = {
    kind: 'layer',
    created: '2026-11-22T02:15:00Z',
    message: 'saved: ü\nsecond line \\ back',
    entries: 12,
    unpackedBytes: 409600,
    dataBytes: 1234,
    dataSha256: 'ab'.repeat(32),
    shards: [
      { offset: 0, length: 1000 },
      { offset: 1000, length: 234 },
    ],
    opaque: ['srv/www', 'odd\ndir', 'back\\slash\\'],
    deleted: ['a\n5', '\x017', 'tab\tx', 'bad\xffbyte', 'sp ace', '-dash', '%s', '\\012'],
    xattrs: [
      {
        path: 'usr/bin/ping',
        attrs: [
          ['security.capability', '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA='],
          ['user.x', '0x31'],
        ],
      },
      { path: 'x attr\nfile', attrs: [['user.odd', '0x796573']] },
      { path: '.', attrs: [['user.root', '0x00']] },
    ],
  };

  test('serialize/parse round trip (escaped paths with newline, backslash, 0x01, 0xff)', () => {
    const body = serializeManifestBody(sample);
    expect(parseManifestBody(body)).toEqual(sample);
    const text = body.toString('latin1');
    expect(text.startsWith('mkma-manifest 1\nkind layer\ncreated 2026-11-22T02:15:00Z\nmessage saved: ')).toBe(true);
    // one line per key: no raw control byte survives escaping
    const lines = text.split('\n');
    expect(lines.filter((l) => l.startsWith('delete '))).toHaveLength(sample.deleted.length);
    expect(lines.filter((l) => l.startsWith('opaque '))).toHaveLength(sample.opaque.length);
    expect(lines.filter((l) => l.startsWith('# file: '))).toHaveLength(sample.xattrs.length);
    // eslint-disable-next-line no-control-regex -- the manifest is text: no control character but newline
    expect(/[\x00-\x09\x0b-\x1f]/.test(text)).toBe(false);
    // the %xattrs section uses getfattr's own spelling, which setfattr --restore reads
    expect(text).toContain('\n# file: x attr\\012file\n');
  });

  test('the frame is a zstd skippable frame ending with the fixed-size footer', () => {
    const frame = encodeManifestFrame(sample);
    const body = serializeManifestBody(sample);
    expect(frame.readUInt32LE(0)).toBe(SKIPPABLE_MAGIC);
    expect(frame.readUInt32LE(4)).toBe(frame.length - 8);
    const footer = frame.subarray(frame.length - FOOTER_SIZE);
    expect(footer.toString('latin1')).toBe(`${FOOTER_TAG}${String(body.length).padStart(12)}\n`);
    expect(parseFooter(footer)).toBe(body.length);
    expect(() => parseFooter(L(`${FOOTER_TAG}${'12x4'.padStart(12)}\n`))).toThrow(ManifestError);
    expect(() => parseFooter(L(`${FOOTER_TAG}${'0'.padStart(12)}\n`))).toThrow(ManifestError);
    expect(() => parseFooter(L(`MKMA-MANIFEST-LEX${'12'.padStart(12)}\n`))).toThrow(ManifestError);
  });

  test('the %xattrs section, as serialized, is read back by setfattr --restore', () => {
    const dir = fs.mkdtempSync(path.join(TMP, 'xr-'));
    const names = ['plain', 'sp ace', 'new\nline', 'back\\slash', 'a\n5', '\x017', 'del\x7f', 'bad\xffbyte', '-dash'];
    for (const n of names) mkfile(dir, n, n);
    const m: Manifest = { ...sample, xattrs: names.map((n, i) => ({ path: n, attrs: [['user.i', `0x${(i + 0x41).toString(16)}`]] })) };
    const body = serializeManifestBody(m).toString('latin1');
    const section = body.slice(body.indexOf('\n%xattrs\n') + '\n%xattrs\n'.length);
    fs.writeFileSync(path.join(TMP, 'xr.dump'), L(section));
    const r = spawnSync('setfattr', ['-h', `--restore=${path.join(TMP, 'xr.dump')}`], { cwd: dir, encoding: 'latin1' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const got = readXattrs(dir, names);
    expect(names.map((n) => [n, got.get(n)])).toEqual(names.map((n, i) => [n, [`user.i=0x${(i + 0x41).toString(16)}`]]));
  });

  test('unescapePath inverts escapePath and rejects malformed escapes', () => {
    for (const raw of [...sample.deleted, ...sample.opaque, 'a\n5', '\x7f1', 'x\\\\y']) expect(unescapePath(escapePath(raw))).toBe(raw);
    expect(() => unescapePath('a\\q')).toThrow(ManifestError);
    expect(() => unescapePath('a\\01')).toThrow(ManifestError);
    expect(() => unescapePath('trailing\\')).toThrow(ManifestError);
  });

  // The init decodes manifest paths with busybox `printf %b` (layer-common.sh: decode); escapePath's
  // output must decode to the same bytes there.
  const TRICKY = [
    'plain',
    'with space',
    'new\nline',
    'a\n5',
    'a\n0',
    '\x017',
    '\x01\x02',
    'tab\t0',
    '\x1f9',
    'trail\n',
    'back\\slash',
    '\\012',
    '\\0',
    '\\c',
    '\\\\',
    '%s%b%%',
    '-n',
    'x\x7fy',
  ];
  test.each(TRICKY.map((raw) => [JSON.stringify(raw), raw]))(
    'escapePath(%s) decodes identically through busybox printf %%b',
    (_label, raw) => {
      const r = spawnSync(BUSYBOX, ['sh', '-c', 'printf "%bx" "$1"', 'sh', escapePath(raw)]);
      expect(r.status).toBe(0);
      expect(r.stdout.toString('latin1')).toBe(raw + 'x');
    },
  );

  test('every byte 0x01-0xff, alone and before a digit, decodes identically through layer-common.sh decode', () => {
    const raws: string[] = [];
    for (let c = 1; c < 256; c++) {
      raws.push(`a${String.fromCharCode(c)}z`);
      raws.push(`a${String.fromCharCode(c)}1`);
    }
    raws.push(Buffer.from('é ✓', 'utf8').toString('latin1'), 'bad\xffbyte', 'trail\n\n');
    const lines = path.join(TMP, 'escaped.lines');
    fs.writeFileSync(lines, L(raws.map((r) => escapePath(r) + '\n').join('')));
    const r = bbsh(`while IFS= read -r l; do decode "$l"; printf '%s' "$DECODED"; printf '\\000'; done <"$1"`, [lines]);
    expect(r.status).toBe(0);
    const got = r.stdout.toString('latin1').split('\0').slice(0, -1);
    const bad = raws
      .map((raw, i) => ({ raw, got: got[i] }))
      .filter((x) => x.raw !== x.got)
      .map((x) => `${JSON.stringify(x.raw)} -> ${JSON.stringify(x.got)}`);
    expect(bad).toEqual([]);
  });

  describe('readManifest detects truncation and damage', () => {
    const dir = path.join(TMP, 'rm');
    let good = '';
    let m: Manifest;
    const variant = (name: string, edit: (b: Buffer) => Buffer) => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, edit(fs.readFileSync(good)));
      return p;
    };

    beforeAll(async () => {
      const src = path.join(dir, 'src');
      fs.mkdirSync(src, { recursive: true });
      for (let i = 0; i < 20; i++) mkfile(src, `f${i}`, noise(8000, 500 + i));
      good = path.join(dir, 'good.cpio.zst');
      m = (await packTree(src, good, { kind: 'layer', level: 3, shardBytes: 32 << 10, created: CREATED })).manifest;
    });

    test('the intact file', () => {
      expect(m.shards.length).toBeGreaterThanOrEqual(3);
      expect(readManifest(good)).toEqual(m);
    });

    const cases: Array<[string, (b: Buffer, m: Manifest) => Buffer, RegExp]> = [
      ['cut by 1 byte', (b) => b.subarray(0, b.length - 1), /no manifest at its end/],
      ['cut exactly at the end of the data', (b, m) => b.subarray(0, m.dataBytes), /no manifest at its end/],
      [
        'a whole middle shard missing',
        (b, m) => Buffer.concat([b.subarray(0, m.shards[1].offset), b.subarray(m.shards[1].offset + m.shards[1].length)]),
        /data is \d+ bytes but the manifest says/,
      ],
      [
        'one byte missing inside the data',
        (b) => Buffer.concat([b.subarray(0, 100), b.subarray(101)]),
        /data is \d+ bytes but the manifest says/,
      ],
      [
        'footer length with a non-digit',
        (b) => {
          const c = Buffer.from(b);
          c[c.length - 3] = 0x78;
          return c;
        },
        /damaged manifest footer/,
      ],
      [
        'footer tag damaged',
        (b) => {
          const c = Buffer.from(b);
          c[c.length - FOOTER_SIZE] ^= 0x20;
          return c;
        },
        /no manifest at its end/,
      ],
      ['footer length too large by one', (b) => bumpFooter(b, 1), /manifest frame header is damaged/],
      ['footer length larger than the file', (b) => bumpFooter(b, 10_000_000), /damaged manifest footer/],
    ];
    // The 8-byte skippable frame header before the manifest body. (Flipping the magic's low
    // nibble would not do: 0x184D2A50-5F are all skippable magics.)
    const frameCases: Array<[string, (b: Buffer, m: Manifest) => Buffer]> = [
      [
        'skippable frame magic damaged',
        (b, m) => {
          const c = Buffer.from(b);
          c[m.dataBytes + 3] ^= 0xff;
          return c;
        },
      ],
      [
        'skippable frame length damaged',
        (b, m) => {
          const c = Buffer.from(b);
          c[m.dataBytes + 4] ^= 2;
          return c;
        },
      ],
    ];
    test.each(frameCases)('%s', (name, edit) => {
      const p = variant(name.replace(/\W+/g, '-'), (b) => edit(b, m));
      expect(() => readManifest(p)).toThrow(/manifest frame header is damaged/);
      expect(spawnSync('zstd', ['-q', '-t', p]).status).not.toBe(0);
    });

    test.each(frameCases)('the shell read_manifest rejects it too: %s', (name, edit) => {
      const p = variant(name.replace(/\W+/g, '-'), (b) => edit(b, m));
      const dest = fs.mkdtempSync(path.join(TMP, 'x-'));
      const r = bbsh('read_manifest "$1" "$MKMA_TMP/m"; echo "manifest rc=$?"', [p, dest]);
      expect(r.stdout.toString()).toContain('manifest rc=1');
    });
    test.each(cases.map(([n, e, re]) => [n, e, re] as const))('%s', (name, edit, re) => {
      const p = variant(name.replace(/\W+/g, '-'), (b) => edit(b, m));
      expect(() => readManifest(p)).toThrow(ManifestError);
      expect(() => readManifest(p)).toThrow(re);
    });

    test('the shell read_manifest rejects the same files, without aborting the shell', () => {
      const files = cases.map(([n]) => path.join(dir, n.replace(/\W+/g, '-')));
      // the test above writes them; write them here too so that this test stands alone
      cases.forEach(([n, e]) => variant(n.replace(/\W+/g, '-'), (b) => e(b, m)));
      const r = bbsh(
        'read_manifest "$1" "$MKMA_TMP/ok.manifest"; echo "good rc=$?"\n' +
          'shift; for f in "$@"; do (read_manifest "$f" "$MKMA_TMP/m" && echo "rc=0 ${f##*/}" || echo "rc=$? ${f##*/}"); echo "sub=$?"; done\n' +
          'for f in "$@"; do read_manifest "$f" "$MKMA_TMP/m" >/dev/null 2>&1; done; echo survived',
        [good, ...files],
      );
      const out = r.stdout.toString();
      expect(out.split('\n').filter((l) => l.startsWith('rc=') || l.startsWith('good'))).toEqual([
        'good rc=0',
        ...files.map((f) => `rc=1 ${path.basename(f)}`),
      ]);
      expect(out).toContain('survived');
      expect(r.status).toBe(0);
    });
  });
});

function bumpFooter(b: Buffer, by: number): Buffer {
  const c = Buffer.from(b);
  const f = c.subarray(c.length - FOOTER_SIZE);
  const len = parseFooter(f) + by;
  c.write(`${FOOTER_TAG}${String(len).padStart(12)}\n`, c.length - FOOTER_SIZE, 'latin1');
  return c;
}

// ---------------------------------------------------------------------------------------------

describe('NewcParser and newc limits', () => {
  const h = (name: string, size: number): NewcHeader => ({
    name: L(name),
    ino: 7,
    mode: S_IFREG | 0o4755,
    uid: 1234,
    gid: 5678,
    nlink: 1,
    mtime: 978_307_200,
    size,
    devMajor: 0,
    devMinor: 0,
    rdevMajor: 0,
    rdevMinor: 0,
  });
  const entry = (name: string, data: string) =>
    Buffer.concat([encodeHeader(h(name, data.length)), L(data), Buffer.alloc((4 - (data.length % 4)) % 4)]);

  test('parses what encodeHeader writes, byte-exact names, in any chunking', () => {
    const stream = Buffer.concat([entry('a\nb\xff', 'hello'), entry('x', ''), entry('y', 'abcd'), trailer()]);
    for (const step of [1, 3, 110, stream.length]) {
      const got: Array<[string, string]> = [];
      const p = new NewcParser({ onEntry: (hh, d) => got.push([hh.name.toString('latin1'), d!.toString('latin1')]) });
      for (let i = 0; i < stream.length; i += step) p.push(stream.subarray(i, i + step));
      p.end();
      expect(got).toEqual([
        ['a\nb\xff', 'hello'],
        ['x', ''],
        ['y', 'abcd'],
      ]);
    }
    const [first] = parseAll(stream);
    expect(first).toEqual({ ...h('a\nb\xff', 5) });
  });

  test('a truncated stream is an error', () => {
    const stream = Buffer.concat([entry('a', 'hello'), entry('b', 'world'), trailer()]);
    for (const cut of [0, 50, 120, entry('a', 'hello').length, stream.length - 1]) {
      const p = new NewcParser({ onEntry: () => {} });
      p.push(stream.subarray(0, cut));
      expect(() => p.end()).toThrow(NewcFormatError);
    }
  });

  test('bad magic is an error', () => {
    const stream = Buffer.concat([entry('a', 'hello'), trailer()]);
    stream.write('070707', 0, 'latin1'); // odc, not newc
    const p = new NewcParser({ onEntry: () => {} });
    expect(() => p.push(stream)).toThrow(NewcFormatError);
    expect(() => p.push(stream)).toThrow(/not a cpio newc header at offset 0/);
    const q = new NewcParser({ onEntry: () => {} });
    const bad = Buffer.concat([entry('a', 'hello'), entry('b', 'x')]);
    bad.write('zz', entry('a', 'hello').length + 6 + 8, 'latin1'); // a non-hex header field
    expect(() => q.push(bad)).toThrow(NewcFormatError);
  });

  test('sizes of 4 GiB and more cannot be written', () => {
    expect(NEWC_MAX_FILE_SIZE).toBe(2 ** 32 - 1);
    expect(() => encodeHeader(h('huge', 2 ** 32))).toThrow(NewcRangeError);
    expect(() => encodeHeader(h('huge', 2 ** 32))).toThrow(/"huge".*size=4294967296/);
    expect(encodeHeader(h('max', 2 ** 32 - 1)).toString('latin1', 54, 62)).toBe('ffffffff');
    expect(() => encodeHeader({ ...h('neg', 1), uid: -1 })).toThrow(NewcRangeError);
  });

  test('packTree refuses a 4 GiB + 1 byte file, naming it, and leaves no file behind', async () => {
    const src = path.join(TMP, 'huge-src');
    const outDir = path.join(TMP, 'huge-out');
    fs.mkdirSync(src);
    fs.mkdirSync(outDir);
    mkfile(src, 'a-small', 'small');
    mkfile(src, 'var/lib/huge.img', '');
    fs.truncateSync(treePath(src, 'var/lib/huge.img'), 2 ** 32 + 1);
    const out = path.join(outDir, 'base.cpio.zst');
    const err = await packTree(src, out, { kind: 'base', level: 3, created: CREATED }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FileTooLargeError);
    expect((err as Error).message).toContain('/var/lib/huge.img is 4.0 GiB');
    expect(fs.readdirSync(outDir)).toEqual([]);
    // and no helper process (zstd, the getfattr xargs) is left running
    await new Promise((r) => setTimeout(r, 300));
    const ps = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' });
    const children = ps.stdout.split('\n').filter((l) => /zstd|getfattr|xargs/.test(l));
    expect(children).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------

describe('layer order', () => {
  const fixture = (n: string) =>
    fs
      .readFileSync(path.join(process.cwd(), 'test/fixtures', n), 'utf8')
      .split('\n')
      .filter(Boolean);
  const names = fixture('layer-order.txt');
  const expected = fixture('layer-order.expected');

  test('the fixture has the cases it claims', () => {
    for (const n of [
      'persistence.2.cpio.zst',
      'persistence.10.cpio.zst',
      'persistence.20261122T021500Z.cpio.zst',
      'persistence.20261122T021500Z-2.cpio.zst',
      'persistence.002.cpio.zst',
      'persistence..cpio.zst',
      'persistence.a b.cpio.zst',
      'other.cpio.zst',
    ]) {
      expect(names).toContain(n);
    }
    expect(expected.length).toBe(23);
  });

  test('sortLayerNames gives the expected natural order', () => {
    expect(sortLayerNames(names)).toEqual(expected);
    expect(sortLayerNames([...names].reverse())).toEqual(expected);
  });

  test('the shell sort_layers gives the same order (and prints nothing else on stdout)', () => {
    const dir = path.join(TMP, 'order');
    fs.mkdirSync(dir);
    for (const n of names) fs.writeFileSync(path.join(dir, n), '');
    fs.mkdirSync(path.join(dir, 'persistence.77.cpio.zst.d')); // not a file, not matching
    const r = bbsh('sort_layers "$1"', [dir]);
    expect(r.status).toBe(0);
    expect(r.stdout.toString('latin1').split('\n').filter(Boolean)).toEqual(expected);
  });
});

describe('a live tree: a file gone between listing and packing', () => {
  async function packListed(onVanished?: (rel: string) => void) {
    const src = fs.mkdtempSync(path.join(TMP, 'live-'));
    mkfile(src, 'a', 'a\n');
    mkfile(src, 'gone', 'gone\n');
    mkfile(src, 'z', 'z\n');
    const entries = [...walkTree(src)];
    fs.rmSync(path.join(src, 'gone'));
    const out = path.join(TMP, `live-${path.basename(src)}.cpio.zst`);
    const w = new ArchiveWriter(out, { kind: 'layer', level: 3 });
    try {
      const stats = await packEntries(
        w,
        entries,
        collectHardlinks(entries),
        undefined,
        onVanished && ((e) => onVanished(e.rel.toString('latin1'))),
      );
      await w.finish();
      return {
        stats,
        listing: execFileSync('bash', ['-c', `zstd -dc ${out} | cpio -t --quiet`], { encoding: 'utf8' })
          .trim()
          .split('\n'),
      };
    } catch (e) {
      w.abort();
      throw e;
    }
  }

  test('with onVanished: skipped whole (no header), reported, the rest packed', async () => {
    const gone: string[] = [];
    const r = await packListed((rel) => gone.push(rel));
    expect(gone).toEqual(['gone']);
    expect(r.listing).toEqual(['.', 'a', 'z']);
    expect(r.stats.files).toBe(2);
  });

  test('without: an error (a base image is never packed from a changing tree)', async () => {
    await expect(packListed()).rejects.toBeInstanceOf(VanishedError);
  });
});
