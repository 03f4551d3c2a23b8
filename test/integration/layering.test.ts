// Layer application on both sides, on every fixture of test/fixtures/layers.ts:
//   (a) TypeScript: unpackImages() from format/apply.ts;
//   (b) the init's shell code: `busybox sh mkma-apply IMAGES TREE`, the script that
//       generateApplyScript() emits, with PATH holding busybox applets (plus the host's
//       zstd and setfattr, which the initramfs ships) and mkma-unpack, as the initramfs has
//       them when the build host can compile it: layers are applied by `mkma-unpack -l`;
//   (c) the same script without mkma-unpack: busybox cpio and the shell's own removals and
//       merge (the fallback for images built where mkma-unpack could not be).
// The trees must be identical (describeTree; (c) cannot set a symlink's owner), and each
// fixture's expected result is checked explicitly on (a) and (b). Runs as root (chown,
// mknod, setcap).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { unpackImages, type UnpackReport } from '../../format/apply.js';
import { generateApplyScript, generateInit } from '../../init/generate.js';
import {
  BUSYBOX,
  buildFixture,
  hostUnpacker,
  DEFAULT_MTIME,
  FIXTURE_NAMES,
  FIXTURES,
  layerName,
  makeBusyboxBin,
  noise,
  type BuiltFixture,
  type FixtureName,
} from '../fixtures/layers.js';
import { describeTree, readXattrs, treePath } from '../helpers/tree.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-layering-'));
let BIN = '';
let UNPACKER = '';
let BIN_FALLBACK = '';
let APPLY = '';
let APPLY_FALLBACK = '';
beforeAll(() => {
  BIN_FALLBACK = makeBusyboxBin(path.join(TMP, 'fallback'));
  BIN = makeBusyboxBin(TMP);
  // The initramfs carries mkma-unpack whenever the build host can compile it (native
  // architecture): test the shell side in that configuration, and (BIN_FALLBACK) without it.
  UNPACKER = hostUnpacker();
  fs.symlinkSync(UNPACKER, path.join(BIN, 'mkma-unpack'));
  APPLY = path.join(TMP, 'mkma-apply');
  fs.writeFileSync(APPLY, generateApplyScript('native'), { mode: 0o755 });
  APPLY_FALLBACK = path.join(TMP, 'mkma-apply-busybox');
  fs.writeFileSync(APPLY_FALLBACK, generateApplyScript('busybox'), { mode: 0o755 });
});
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

interface Side {
  side: 'ts' | 'sh' | 'fallback' | 'native';
  tree: string;
  /** layer file names reported as not applied */
  skipped: string[];
  /** TS: the report; sh: stdout + stderr */
  log: string;
  /** sh: exit status; ts: 0, or 1 when unpackImages threw */
  status: number | null;
}

interface Run {
  fx: BuiltFixture;
  ts: Side;
  sh: Side;
  fallback: Side;
  /** unpackImages with mkma-unpack (mkma unpack --extractor native) */
  native: Side;
  report: UnpackReport | null;
  /** the directories holding each tree: "../victim" from a tree is `${parent}/victim` */
  parents: { ts: string; sh: string; fallback: string };
}

/** What lies beside each tree, for the "never outside the tree" checks. */
function plantVictims(parent: string): void {
  fs.writeFileSync(path.join(parent, 'victim'), 'victim\n');
  fs.mkdirSync(path.join(parent, 'victim-dir'));
  fs.writeFileSync(path.join(parent, 'victim-dir', 'file'), 'victim\n');
}

async function run(name: FixtureName): Promise<Run> {
  const dir = path.join(TMP, name);
  fs.mkdirSync(dir);
  const fx = await buildFixture(name, dir);
  const parents = { ts: path.join(dir, 'a'), sh: path.join(dir, 'b'), fallback: path.join(dir, 'c') };
  const treeA = path.join(parents.ts, 'tree');
  for (const p of [parents.ts, parents.sh, parents.fallback]) {
    fs.mkdirSync(p);
    plantVictims(p);
    fs.mkdirSync(path.join(p, 'tree'));
  }

  let report: UnpackReport | null = null;
  let ts: Side;
  try {
    report = await unpackImages(fx.images, treeA);
    ts = {
      side: 'ts',
      tree: treeA,
      skipped: report.layers.filter((l) => !l.applied).map((l) => path.basename(l.file)),
      log: JSON.stringify(report, null, 1),
      status: 0,
    };
  } catch (e) {
    ts = { side: 'ts', tree: treeA, skipped: [], log: String((e as Error).stack), status: 1 };
  }

  const shell = (side: 'sh' | 'fallback', bin: string): Side => {
    const tree = path.join(parents[side], 'tree');
    const r = spawnSync(BUSYBOX, ['sh', side === 'sh' ? APPLY : APPLY_FALLBACK, fx.images, tree], {
      env: { PATH: bin, LC_ALL: 'C' },
      cwd: dir,
      maxBuffer: 64 << 20,
    });
    const log = r.stdout.toString('latin1') + r.stderr.toString('latin1');
    return { side, tree, skipped: [...log.matchAll(/LAYER SKIPPED (\S+):/g)].map((m) => m[1]), log, status: r.status };
  };
  // `mkma unpack`'s native path: unpackImages driving mkma-unpack (-X, then -l)
  const nativeTree = path.join(dir, 'd', 'tree');
  fs.mkdirSync(nativeTree, { recursive: true });
  let native: Side;
  try {
    const rep = await unpackImages(fx.images, nativeTree, undefined, UNPACKER);
    native = {
      side: 'native',
      tree: nativeTree,
      skipped: rep.layers.filter((l) => !l.applied).map((l) => path.basename(l.file)),
      log: JSON.stringify(rep),
      status: 0,
    };
  } catch (e) {
    native = { side: 'native', tree: nativeTree, skipped: [], log: String((e as Error).stack), status: 1 };
  }
  return { fx, ts, sh: shell('sh', BIN), fallback: shell('fallback', BIN_FALLBACK), native, report, parents };
}

/** describeTree without symlink owners (busybox cpio cannot set them: lchown is not used). */
function withoutSymlinkOwners(tree: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(tree).map(([p, d]) => [p, d.startsWith('symlink ') ? d.replace(/^(symlink \d+) \d+:\d+/, '$1 ?:?') : d]),
  );
}

// ---------------------------------------------------------------------------------------------
// Explicit expectations per fixture, checked on each side's tree.

const P = (tree: string, rel: string) => treePath(tree, rel);
const exists = (tree: string, rel: string) => {
  try {
    fs.lstatSync(P(tree, rel));
    return true;
  } catch {
    return false;
  }
};
const read = (tree: string, rel: string) => fs.readFileSync(P(tree, rel)).toString('latin1');
const lst = (tree: string, rel: string) => fs.lstatSync(P(tree, rel));
const ls = (tree: string, rel: string) =>
  (fs.readdirSync(P(tree, rel), { encoding: 'buffer' }) as Buffer[]).map((b) => b.toString('latin1')).sort();
const kind = (tree: string, rel: string) => {
  const st = lst(tree, rel);
  return st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
};
const mode = (tree: string, rel: string) => lst(tree, rel).mode & 0o7777;
const owner = (tree: string, rel: string) => `${lst(tree, rel).uid}:${lst(tree, rel).gid}`;
const link = (tree: string, rel: string) => fs.readlinkSync(P(tree, rel)).toString();
const getcap = (tree: string, rel: string) => spawnSync('getcap', [P(tree, rel).toString('latin1')], { encoding: 'latin1' }).stdout.trim();
const xattrsOf = (tree: string, rel: string) => readXattrs(tree, [rel]).get(rel) ?? [];
const hex = (s: string) => '0x' + Buffer.from(s).toString('hex');

const EXPECT: Record<FixtureName, (t: string, s: Side) => void> = {
  delete: (t) => {
    expect(exists(t, 'etc/gone')).toBe(false);
    expect(exists(t, 'var/cache/app')).toBe(false);
    expect(ls(t, 'var/cache')).toEqual(['other']);
    expect(ls(t, 'etc')).toEqual(['hostname', 'keep', 'new']);
    expect(read(t, 'etc/new')).toBe('new\n');
  },
  opaque: (t) => {
    expect(ls(t, 'srv/www')).toEqual(['index.html', 'sub']);
    expect(ls(t, 'srv/www/sub')).toEqual(['new']);
    expect(read(t, 'srv/www/index.html')).toBe('<p>new</p>\n');
    expect(ls(t, 'srv')).toEqual(['other', 'www']);
    expect(mode(t, 'srv/www')).toBe(0o750);
    expect(owner(t, 'srv/www')).toBe('1234:5678');
  },
  'dir-file-dir': (t) => {
    expect(kind(t, 'opt/thing')).toBe('dir');
    expect(ls(t, 'opt/thing')).toEqual(['fresh']);
    expect(read(t, 'opt/thing/fresh')).toBe('fresh\n');
  },
  'symlink-dir-swap': (t) => {
    expect(kind(t, 's')).toBe('dir');
    expect(ls(t, 's')).toEqual(['inside']);
    expect(kind(t, 'd')).toBe('symlink');
    expect(link(t, 'd')).toBe('target');
    expect(ls(t, 'target')).toEqual(['t1']); // replacing the symlink s did not touch its target
  },
  'file-to-symlink': (t) => {
    expect(kind(t, 'etc/conf')).toBe('symlink');
    expect(link(t, 'etc/conf')).toBe('conf.d/real');
    expect(owner(t, 'etc/conf')).toBe('1234:5678');
    expect(kind(t, 'etc/link')).toBe('file');
    expect(read(t, 'etc/link')).toBe('now a file\n');
    expect(mode(t, 'etc/link')).toBe(0o600);
    expect(read(t, 'etc/conf.d/real')).toBe('real\n');
  },
  hardlinks: (t) => {
    const ino = (rel: string) => lst(t, rel).ino;
    expect(ino('usr/lib/y')).toBe(ino('usr/lib/x'));
    expect(ino('usr/share/z')).toBe(ino('usr/lib/x'));
    expect(lst(t, 'usr/lib/x').nlink).toBe(3);
    expect(fs.readFileSync(P(t, 'usr/share/z')).equals(noise(100_000, 1))).toBe(true);
    expect(owner(t, 'usr/lib/y')).toBe('1234:5678');
    expect(mode(t, 'usr/share/z')).toBe(0o640);
    expect(ino('pair/two')).toBe(ino('pair/one'));
    // the base pair: bin/a replaced alone, bin/b keeps the old data and is no longer linked
    expect(read(t, 'bin/a')).toBe('layer a\n');
    expect(read(t, 'bin/b')).toBe('base a+b\n');
    expect(ino('bin/a')).not.toBe(ino('bin/b'));
    expect(lst(t, 'bin/b').nlink).toBe(1);
  },
  'hardlinks-empty': (t) => {
    expect(lst(t, 'run/lock-b').ino).toBe(lst(t, 'run/lock-a').ino);
    expect(lst(t, 'run/lock-a').nlink).toBe(2);
  },
  'odd-names': (t) => {
    expect(ls(t, 'names')).toEqual([
      '-n',
      '..dots',
      '.hidden',
      '[br]',
      '\\\\two',
      'back\\slash',
      'new\nline',
      'odd dir\n',
      'tab\there',
      'with space',
      'x\ny',
      '\xc3\xa9-utf8',
      '\xfe\xff',
    ]);
    expect(read(t, 'names/with space')).toBe('layer with space');
    expect(read(t, 'names/back\\slash')).toBe('layer back\\slash');
    expect(read(t, 'names/new\nline')).toBe('base new\nline');
    expect(ls(t, 'names/odd dir\n')).toEqual(['new']);
  },
  'escape-digit': (t) => {
    expect(ls(t, 'names')).toEqual(['keep']);
  },
  xattrs: (t) => {
    expect(getcap(t, 'usr/local/bin/mytool')).toMatch(/ cap_net_raw[=+]ep$/);
    expect(xattrsOf(t, 'usr/local/bin/mytool')).toContain(`user.comment=${hex('hello')}`);
    expect(owner(t, 'usr/local/bin/mytool')).toBe('1234:5678');
    expect(mode(t, 'usr/local/bin/mytool')).toBe(0o750);
    expect(getcap(t, 'usr/bin/ping')).toMatch(/ cap_net_raw[=+]ep$/);
    expect(xattrsOf(t, 'usr/bin/ping')).toContain(`user.origin=${hex('base')}`);
    expect(getcap(t, 'usr/bin/oldcap')).toBe(''); // replaced by a file without capabilities
    expect(xattrsOf(t, 'usr/bin/oldcap')).toEqual([]);
    expect(xattrsOf(t, 'data/x attr\nfile')).toEqual([`user.odd=${hex('yes')}`]);
    expect(xattrsOf(t, 'data')).toEqual([`user.dir=${hex('on a directory')}`]);
  },
  'xattrs-backslash': (t) => {
    expect(xattrsOf(t, 'data/plain')).toEqual([`user.plain=${hex('plain')}`]);
    expect(xattrsOf(t, 'data/back\\slash')).toEqual([`user.odd=${hex('backslash')}`]);
  },
  'older-mtime': (t) => {
    expect(read(t, 'etc/motd')).toBe('layer motd\n');
    expect(lst(t, 'etc/motd').mtimeMs).toBe(978_307_200_000);
    expect(read(t, 'etc/issue')).toBe('layer issue\n');
  },
  'symlinked-parent': (t) => {
    expect(ls(t, 'real')).toEqual(['f', 'g', 'sub']); // nothing deleted through ln or ln2
    expect(ls(t, 'real/sub')).toEqual(['h']);
    expect(kind(t, 'ln')).toBe('symlink');
    expect(kind(t, 'plain')).toBe('file');
    expect(kind(t, 'ln2')).toBe('dir');
    expect(ls(t, 'ln2')).toEqual(['own']);
    expect(read(t, 'new')).toBe('new');
  },
  'corrupt-layer': (t) => {
    expect(read(t, 'good1')).toBe('good1');
    expect(read(t, 'good3')).toBe('good3');
    expect(exists(t, 'etc/x1')).toBe(false);
    expect(exists(t, 'bad')).toBe(false);
    expect(read(t, 'etc/keep-me')).toBe('keep me'); // the skipped layer's deletion did not happen
    expect(read(t, 'etc/hostname')).toBe('mkma\n');
  },
  'truncated-layer': (t) => {
    expect(read(t, 'good1')).toBe('good1');
    expect(read(t, 'good3')).toBe('good3');
    expect(exists(t, 'bad')).toBe(false);
    expect(read(t, 'etc/keep-me')).toBe('keep me');
    expect(read(t, 'etc/hostname')).toBe('mkma\n');
  },
  'damaged-footer': (t) => {
    expect(read(t, 'good1')).toBe('good1');
    expect(read(t, 'good3')).toBe('good3');
    expect(exists(t, 'bad')).toBe(false);
    expect(read(t, 'etc/keep-me')).toBe('keep me');
  },
  'natural-order': (t) => {
    expect(ls(t, 'marker')).toEqual(['12']);
    expect(read(t, 'last')).toBe('12\n');
    expect(lst(t, 'last').mtimeMs).toBe((DEFAULT_MTIME + 11) * 1000);
  },
  'ignored-names': (t) => {
    expect(ls(t, '.')).toEqual(['etc', 'good1', 'tmp', 'usr']);
  },
  'unsafe-paths': (t) => {
    expect(exists(t, 'good1')).toBe(false); // the layer deleting "../victim" is skipped whole
    expect(exists(t, 'inside')).toBe(false); // the layer with "../escaped" is skipped whole
  },
  'unsafe-dot-paths': (t) => {
    expect(ls(t, '.')).toEqual(['etc', 'tmp', 'usr']);
    expect(ls(t, 'etc')).toEqual(['hostname']);
  },
  'special-files': (t) => {
    expect(lst(t, 'dev/null').isCharacterDevice()).toBe(true);
    expect(lst(t, 'dev/zero').isCharacterDevice()).toBe(true);
    expect(lst(t, 'dev/loop9').isBlockDevice()).toBe(true);
    expect(lst(t, 'run/fifo').isFIFO()).toBe(true);
    expect(lst(t, 'run/fifo2').isFIFO()).toBe(true);
    expect(owner(t, 'run/fifo2')).toBe('1234:5678');
    expect(mode(t, 'usr/bin/su')).toBe(0o4755);
    expect(mode(t, 'usr/bin/wall')).toBe(0o2755);
    expect(mode(t, 'usr/bin/newsuid')).toBe(0o4750);
    expect(owner(t, 'usr/bin/newsuid')).toBe('1234:5678');
    expect(mode(t, 'var/mail')).toBe(0o2775);
    expect(mode(t, 'tmp')).toBe(0o1777);
    expect(lst(t, 'epoch').mtimeMs).toBe(0);
    expect(fs.readFileSync(P(t, 'big')).equals(noise(3 << 20, 99))).toBe(true);
    expect(fs.readFileSync(P(t, 'big2')).equals(noise((1 << 20) + 12345, 98))).toBe(true);
    expect(mode(t, 'empty')).toBe(0o600);
    // rule 3: an existing directory takes the layer's owner and mode, and keeps its contents
    expect(mode(t, 'data')).toBe(0o750);
    expect(owner(t, 'data')).toBe('1234:5678');
    expect(ls(t, 'data')).toEqual(['base', 'layer']);
    expect(owner(t, 'data/base')).toBe('1234:5678');
  },
};

// ---------------------------------------------------------------------------------------------

describe.each(FIXTURE_NAMES)('fixture %s', (name) => {
  const def = FIXTURES[name];
  let r: Run;
  beforeAll(async () => {
    r = await run(name);
  }, 120_000);

  test('TypeScript and busybox give identical trees', () => {
    if (r.ts.status !== 0) throw new Error(`unpackImages threw: ${r.ts.log}`);
    expect(describeTree(r.sh.tree)).toEqual(describeTree(r.ts.tree));
  });

  test('the shell fallback without mkma-unpack (busybox cpio) gives the same tree', () => {
    if (r.ts.status !== 0) throw new Error(`unpackImages threw: ${r.ts.log}`);
    expect({ status: r.fallback.status, skipped: r.fallback.skipped }).toEqual({ status: r.sh.status, skipped: r.sh.skipped });
    expect(withoutSymlinkOwners(describeTree(r.fallback.tree))).toEqual(withoutSymlinkOwners(describeTree(r.ts.tree)));
  });

  test('unpackImages with mkma-unpack (mkma unpack --extractor native) gives the same tree and report', () => {
    if (r.ts.status !== 0) throw new Error(`unpackImages threw: ${r.ts.log}`);
    expect({ status: r.native.status, skipped: r.native.skipped }).toEqual({ status: 0, skipped: r.ts.skipped });
    expect(describeTree(r.native.tree)).toEqual(describeTree(r.ts.tree));
  });

  test.each(['ts', 'sh'] as const)('%s: expected result', (side) => {
    const s = r[side];
    if (side === 'ts') {
      if (s.status !== 0) throw new Error(`unpackImages threw: ${s.log}`);
    } else {
      // mkma-apply exits 3 when a layer was skipped, 0 when all applied
      expect({ status: s.status, log: s.log }).toEqual({ status: def.skipped?.length ? 3 : 0, log: s.log });
    }
    expect(s.skipped).toEqual(def.skipped ?? []);
    EXPECT[name](s.tree, s);
  });

  test.each(['ts', 'sh', 'fallback'] as const)('%s: nothing outside the tree was touched', (side) => {
    const parent = r.parents[side];
    const readOrNull = (p: string) => (fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : null);
    expect({
      beside: fs.existsSync(parent) ? fs.readdirSync(parent).sort() : 'the directory holding the tree is gone',
      victim: readOrNull(path.join(parent, 'victim')),
      'victim-dir/file': readOrNull(path.join(parent, 'victim-dir', 'file')),
    }).toEqual({ beside: ['tree', 'victim', 'victim-dir'], victim: 'victim\n', 'victim-dir/file': 'victim\n' });
  });

  if (def.skipped?.length) {
    test('skipped layers are named: "LAYER SKIPPED" in the shell output, applied=false in the report', () => {
      for (const n of def.skipped!) {
        expect(r.sh.log).toMatch(new RegExp(`LAYER SKIPPED ${n.replace(/\./g, '\\.')}: \\S`));
        const rep = r.report!.layers.find((l) => path.basename(l.file) === n)!;
        expect(rep.applied).toBe(false);
        expect(rep.reason).toBeTruthy();
      }
      expect(r.report!.layers.filter((l) => l.applied).length).toBe(def.layers.length - def.skipped!.length);
    });
  }

  if (def.ignored?.length) {
    test('names outside the layer pattern are reported as ignored (TS) and never applied', () => {
      expect([...r.report!.ignored].sort()).toEqual([...def.ignored!].sort());
      expect(r.report!.layers.map((l) => path.basename(l.file))).toEqual([layerName('1')]);
    });
  }
});

describe('generated shell', () => {
  const check = (text: string, file: string) => {
    const p = path.join(TMP, file);
    fs.writeFileSync(p, text);
    const r = spawnSync('shellcheck', [p], { encoding: 'utf8' });
    return { status: r.status, out: r.stdout + r.stderr };
  };

  test('shellcheck passes on the generated init', () => {
    for (const extractor of ['native', 'busybox'] as const) {
      const init = generateInit({
        modules: { storage: ['a'], filesystems: { ext4: ['crc32c', 'ext4'] }, overlay: ['overlay'] },
        defaultRamSize: '50%',
        deviceTimeoutSec: 30,
        version: 't',
        extractor,
      });
      expect(check(init, `init-${extractor}`)).toEqual({ status: 0, out: '' });
    }
  });

  test.each(['native', 'busybox'] as const)('shellcheck passes on the generated apply script (%s)', (v) => {
    expect(check(generateApplyScript(v), `mkma-apply-${v}.sh`)).toEqual({ status: 0, out: '' });
  });

  test.each(['native', 'busybox'] as const)('the init carries one variant of the layer code (%s), chosen at build time', (v) => {
    const init = generateInit({
      modules: { storage: [], filesystems: {}, overlay: [] },
      defaultRamSize: '50%',
      deviceTimeoutSec: 30,
      version: 't',
      extractor: v,
    });
    expect(init.includes('layer-native.sh: the layer code')).toBe(v === 'native');
    expect(init.includes('layer-busybox.sh: the layer code')).toBe(v === 'busybox');
    expect(init).not.toMatch(/have_unpacker|command -v mkma-unpack/);
  });
});
