// The conformance corpus: crafted images, valid and hostile, each with the outcome that
// docs/FORMAT.md decides for it. test/integration/conformance.test.ts runs every case through
// the three implementations — mkma-unpack (C; driven by `mkma unpack` and by the init's
// native layer code), the TypeScript reader (format/reader.ts, format/apply.ts) and the
// init's busybox fallback — and they must agree: the same layers applied or refused (for the
// reason given here), the same tree, and nothing outside the tree touched.
//
// Every case gets `V`, a directory outside the tree that attacks aim at: it holds
// V/passwd ("victim\n"), V/f, V/sub/g, and V/file (mode 0644) for the metadata attacks.
import { FORMAT } from '../../lib/contract.js';
import { S_IFCHR, S_IFIFO, S_IFREG, S_IFSOCK } from '../../format/newc.js';
import { dir, file, symlink, type RawEntry, type RawImage } from './images.js';

export interface LayerExpect {
  name: string;
  image: RawImage | 'fifo' | 'directory';
  /** applied (default) or refused for a reason matching `reason` */
  refused?: RegExp;
  /** applied, with a warning matching this */
  warning?: RegExp;
}

export interface Case {
  name: string;
  description: string;
  /** the base image; `refused`: the whole unpack fails with that reason */
  base: RawImage;
  baseRefused?: RegExp;
  layers: LayerExpect[];
  /** a check of the resulting tree, run on every implementation's tree (throw to fail) */
  check?: (t: TreeView) => void;
  /**
   * The busybox fallback cannot observe this case's defect (docs/FORMAT.md, "The busybox
   * fallback"): it must stay inside the tree, but may apply what the others refuse.
   */
  fallbackDiffers?: string;
}

/** What a case's check can ask of a tree (test/integration/conformance.test.ts implements it). */
export interface TreeView {
  kind(rel: string): 'file' | 'dir' | 'symlink' | 'other' | null;
  read(rel: string): string;
  mode(rel: string): number;
  mtime(rel: string): number;
  list(rel: string): string[];
  xattr(rel: string, name: string): string | null;
}

const base = (...extra: RawEntry[]): RawImage => ({
  kind: 'base',
  shards: [[dir('.'), dir('etc'), file('etc/hostname', 'mkma\n'), dir('real'), file('real/f', 'real f\n'), ...extra]],
});

const layer = (entries: RawEntry[], o: Partial<RawImage> = {}): RawImage => ({ kind: 'layer', shards: [[dir('.'), ...entries]], ...o });

const eq = (a: unknown, b: unknown, what: string) => {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`);
};

const STRUCTURE = /twice|not a directory/;
const L1 = 'persistence.1.cpio.zst';
const L2 = 'persistence.2.cpio.zst';

export function corpus(V: string): Case[] {
  const deep = Array.from({ length: 1000 }, () => 'd').join('/');
  // every level an entry of its own (a directory without one gets the time of extraction)
  const deepDirs = Array.from({ length: 1000 }, (_, i) => dir(`deep/${Array.from({ length: i + 1 }, () => 'd').join('/')}`));
  return [
    // --- valid images --------------------------------------------------------------------
    {
      name: 'valid-basic',
      description: 'a base and a layer adding, replacing and deleting',
      base: base(file('etc/gone', 'gone\n'), symlink('ln', 'real')),
      layers: [
        {
          name: L1,
          image: layer([dir('etc'), file('etc/hostname', 'layer\n'), file('new', 'new\n', { mode: S_IFREG | 0o600 })], {
            deleted: ['etc/gone'],
          }),
        },
      ],
      check: (t) => {
        eq(t.read('etc/hostname'), 'layer\n', 'etc/hostname');
        eq(t.kind('etc/gone'), null, 'etc/gone');
        eq(t.mode('new'), 0o600, 'new mode');
        eq(t.kind('ln'), 'symlink', 'ln');
      },
    },
    {
      name: 'implicit-parents',
      description: 'names whose parents have no entries of their own: made as directories (0755)',
      base: base(),
      layers: [{ name: L1, image: layer([file('new/sub/file', 'x')]) }],
      check: (t) => {
        eq(t.kind('new/sub'), 'dir', 'new/sub');
        eq(t.mode('new'), 0o755, 'new mode');
      },
    },
    {
      name: 'dot-slash-names',
      description: 'names written "./PATH" (find . | cpio -o) are PATH',
      base: { kind: 'base', shards: [[dir('.'), dir('./etc'), file('./etc/hostname', 'dot\n')]] },
      layers: [],
      check: (t) => eq(t.read('etc/hostname'), 'dot\n', 'etc/hostname'),
    },
    {
      name: 'merged-dir-mtime',
      description: 'a directory in both the tree and a layer takes the layer\'s metadata, mtime included (not "now")',
      base: base(),
      layers: [{ name: L1, image: layer([dir('etc', { mode: 0o40750, mtime: 1_234_567_890 }), file('etc/new', 'x')]) }],
      check: (t) => {
        eq(t.mode('etc'), 0o750, 'etc mode');
      },
    },
    {
      name: 'deep-tree',
      description: 'a 1000-level-deep tree in the base and in a layer (iterative merge)',
      base: base(dir('deep'), ...deepDirs, file(`deep/${deep}/leaf`, 'base leaf\n')),
      layers: [
        {
          name: L1,
          image: layer([dir('deep'), ...deepDirs, file(`deep/${deep}/leaf`, 'layer leaf\n'), file(`deep/${deep}/new`, 'new\n')]),
        },
      ],
      check: (t) => {
        eq(t.read(`deep/${deep}/leaf`), 'layer leaf\n', 'deep leaf');
        eq(t.read(`deep/${deep}/new`), 'new\n', 'deep new');
      },
    },
    {
      name: 'hardlinks',
      description: 'a hardlink group, GNU convention (data with the last member), and an empty group',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([
            file('a', '', { ino: 7, nlink: 2 }),
            file('b', 'shared\n', { ino: 7, nlink: 2 }),
            file('e1', '', { ino: 8, nlink: 2 }),
            file('e2', '', { ino: 8, nlink: 2 }),
          ]),
        },
      ],
      check: (t) => {
        eq(t.read('a'), 'shared\n', 'a');
      },
    },

    // --- attacks: nothing outside the tree changes, whichever extractor -------------------
    {
      name: 'attack-write-through-symlinked-parent',
      description: 'esc -> V, then esc/file: would write V/file',
      base: base(),
      layers: [{ name: L1, image: layer([symlink('esc', V), file('esc/passwd', 'pwned\n')]), refused: STRUCTURE }],
    },
    {
      name: 'attack-write-through-symlinked-parent-base',
      description: 'the same in a base: the unpack fails',
      base: base(symlink('esc', V), file('esc/passwd', 'pwned\n')),
      baseRefused: STRUCTURE,
      layers: [],
    },
    {
      name: 'attack-write-through-relative-symlink',
      description: 'esc -> real (inside), then esc/file: a name below a non-directory, refused',
      base: base(),
      layers: [{ name: L1, image: layer([dir('real'), symlink('esc', 'real'), file('esc/file', 'x')]), refused: STRUCTURE }],
    },
    {
      name: 'attack-delete-through-symlink',
      description: 'esc -> V, then the directory esc/sub: making room for it would remove V/sub',
      base: base(),
      layers: [{ name: L1, image: layer([symlink('esc', V), dir('esc/sub')]), refused: STRUCTURE }],
    },
    {
      name: 'attack-hardlink-through-later-symlink',
      description: 'd/passwd (a hardlink member without data), then d -> V, then the data member g',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('d/passwd', '', { ino: 9, nlink: 2 }), symlink('d', V), file('g', 'pwned\n', { ino: 9, nlink: 2 })]),
          // (busybox: its deferred symlink meets the directory the member made)
          refused: /twice|not a directory|can't create symlink/,
        },
      ],
    },
    {
      name: 'attack-dir-metadata-through-symlink',
      description: 'directory x (04777, uid 1234), then the symlink x -> V/file',
      base: base(),
      layers: [{ name: L1, image: layer([dir('x', { mode: 0o44777, uid: 1234 }), symlink('x', `${V}/file`)]), refused: STRUCTURE }],
    },
    {
      name: 'attack-hidden-hardlink-member',
      description: 'a zero-size hardlink member named ../escaped (busybox cpio lists no such member)',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('../escaped', '', { ino: 5, nlink: 2 }), file('inside', 'x', { ino: 5, nlink: 2 })]),
          refused: /unsafe name/,
        },
      ],
    },
    {
      name: 'attack-xattr-absolute-path',
      description: 'an %xattrs record for /etc/passwd',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('f', 'x')], { xattrs: '# file: /etc/passwd\nsecurity.capability=0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=\n' }),
          refused: /xattrs/,
        },
      ],
    },
    {
      name: 'attack-xattr-dotdot-path',
      description: 'an %xattrs record for ../x',
      base: base(),
      layers: [{ name: L1, image: layer([file('f', 'x')], { xattrs: '# file: a/../../x\nuser.x=0x01\n' }), refused: /xattrs/ }],
    },
    {
      name: 'attack-xattr-through-symlinked-parent',
      description: 'the tree has ln -> V; an %xattrs record for ln/f: not in the tree, a warning',
      base: base(symlink('ln', V)),
      layers: [{ name: L1, image: layer([file('g', 'x')], { xattrs: '# file: ln/f\nuser.pwned=0x01\n' }), warning: /not in the tree/ }],
    },
    {
      name: 'attack-removal-through-symlinked-parent',
      description: 'the tree has ln -> V; the layer deletes ln/f and ln/sub: nothing to remove in its view',
      base: base(symlink('ln', V)),
      layers: [{ name: L1, image: layer([file('g', 'x')], { deleted: ['ln/f'], opaque: ['ln/sub'] }) }],
      check: (t) => eq(t.kind('ln'), 'symlink', 'ln'),
    },
    {
      name: 'absolute-name',
      description: 'an entry named //abs: leading slashes are dropped, as GNU and busybox cpio drop them',
      base: base(),
      layers: [{ name: L1, image: layer([file('//abs', 'x')]) }],
      check: (t) => eq(t.read('abs'), 'x', 'abs'),
    },
    {
      name: 'slash-only-name',
      description: 'an entry named "/": nothing left of it',
      base: base(),
      layers: [{ name: L1, image: layer([file('/', 'x')]), refused: /unsafe name/ }],
    },
    {
      name: 'attack-dotdot-name',
      description: 'an entry named ../escaped',
      base: base(),
      layers: [{ name: L1, image: layer([file('../escaped', 'x')]), refused: /unsafe name/ }],
    },
    {
      name: 'attack-dotdot-removal',
      description: 'a layer deleting ../victim',
      base: base(),
      layers: [{ name: L1, image: layer([file('g', 'x')], { deleted: ['../victim'] }), refused: /unsafe path/ }],
    },

    // --- edge cases decided in docs/FORMAT.md ---------------------------------------------
    {
      name: 'dot-component',
      description: 'a/./x: a "." component is not a canonical name',
      base: base(),
      layers: [{ name: L1, image: layer([dir('a'), file('a/./x', 'x')]), refused: /unsafe name/ }],
    },
    {
      name: 'dot-not-a-directory',
      description: 'an entry named "." that is a file',
      base: base(),
      layers: [{ name: L1, image: { kind: 'layer', shards: [[file('.', 'x')]] }, refused: /root entry/ }],
    },
    {
      name: 'empty-name',
      description: 'an entry with an empty name (namesize 1)',
      base: base(),
      // (busybox lists it as an empty name)
      layers: [{ name: L1, image: layer([file('', 'x')]), refused: /name size|unsafe name/ }],
    },
    {
      name: 'socket',
      description: 'a socket entry: mkma never writes one; refused',
      base: base(),
      layers: [{ name: L1, image: layer([{ name: 'sock', mode: S_IFSOCK | 0o755 }]), refused: /socket/ }],
    },
    {
      name: 'twice',
      description: 'a name twice',
      base: base(),
      layers: [{ name: L1, image: layer([file('x', 'one'), file('x', 'two')]), refused: /twice/ }],
    },
    {
      name: 'dir-twice',
      description: 'a directory twice',
      base: base(),
      layers: [{ name: L1, image: layer([dir('x'), dir('x', { mode: 0o40700 })]), refused: /twice/ }],
    },
    {
      name: 'below-a-file',
      description: 'f is a file, then f/x',
      base: base(),
      layers: [{ name: L1, image: layer([file('f', 'x'), file('f/x', 'y')]), refused: STRUCTURE }],
    },
    {
      name: 'data-in-a-directory',
      description: 'a directory entry with data',
      base: base(),
      layers: [{ name: L1, image: layer([dir('d', { data: 'junk' }), file('e', 'x')]), refused: /data|cpio/ }],
    },
    {
      name: 'device',
      description: 'a character device and a fifo',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([
            dir('dev'),
            { name: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 },
            { name: 'fifo', mode: S_IFIFO | 0o600 },
          ]),
        },
      ],
      check: (t) => eq(t.kind('dev/null'), 'other', 'dev/null'),
    },
    {
      name: 'shard-table-gap',
      description: 'a shard table with a gap',
      base: base(),
      layers: [{ name: L1, image: layer([file('x', 'x')], { shardTable: [{ offset: 1, length: 10 }] }), refused: /does not follow|shard/ }],
    },
    {
      name: 'shard-cut-inside-an-entry',
      description: 'two shards whose boundary is inside an entry (the table tiles DATA, the archive does not)',
      base: base(),
      layers: [
        {
          name: L1,
          image: { kind: 'layer', shards: [[dir('.'), file('a', 'a'), file('b', 'b')]], cutAt: [300] },
          // (parallel shards: whichever notices first)
          refused: /inside|truncated|short read|not a cpio/,
        },
      ],
    },
    {
      name: 'trailer-in-first-shard',
      description: 'TRAILER!!! in a shard before the last',
      base: base(),
      layers: [
        {
          name: L1,
          image: { kind: 'layer', shards: [[dir('.'), file('a', 'a'), { name: 'TRAILER!!!', mode: 0 }], [file('b', 'b')]], entries: 4 },
          refused: /TRAILER|entries/,
        },
      ],
    },
    {
      name: 'entries-mismatch',
      description: 'the manifest counts more entries than the archive has',
      base: base(),
      layers: [{ name: L1, image: layer([file('x', 'x')], { entries: 5 }), refused: /manifest says 5 entries/ }],
    },
    {
      name: 'twenty-digit-data-bytes',
      description: 'data_bytes with 20 digits',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('x', 'x')], { editBody: (b) => b.replace(/^data_bytes \d+$/m, 'data_bytes 00000000000000000123') }),
          refused: /data_bytes/,
        },
      ],
    },
    {
      name: 'leading-zero-number',
      description: 'a manifest number with a leading zero (the shell would read it as octal)',
      base: base(),
      layers: [
        { name: L1, image: layer([file('x', 'x')], { editBody: (b) => b.replace(/^entries (\d+)$/m, 'entries 0$1') }), refused: /entries/ },
      ],
    },
    {
      name: 'long-delete-path',
      description: 'a delete path over 4 KiB',
      base: base(),
      layers: [{ name: L1, image: layer([file('x', 'x')], { deleted: ['a/'.repeat(2100) + 'b'] }), refused: /too long/ }],
    },
    {
      name: 'bad-delete-escape',
      description: 'a delete path with an escape escapePath never writes (\\n)',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('x', 'x')], { editBody: (b) => b.replace('%xattrs\n', 'delete etc\\nhostname\n%xattrs\n') }),
          refused: /bad or too long path/,
        },
      ],
    },
    {
      name: 'xattr-line-without-value',
      description: 'an %xattrs line that is not NAME=VALUE',
      base: base(),
      layers: [{ name: L1, image: layer([file('f', 'x')], { xattrs: '# file: f\nuser.x\n' }), refused: /xattrs/ }],
    },
    {
      name: 'xattr-text-value',
      description: 'an %xattrs value that is neither 0x… nor 0s…',
      base: base(),
      layers: [{ name: L1, image: layer([file('f', 'x')], { xattrs: '# file: f\nuser.x="text"\n' }), refused: /xattrs/ }],
    },
    {
      name: 'xattr-valid',
      description: 'a valid %xattrs section (hex and base64) on a layer file',
      base: base(),
      layers: [{ name: L1, image: layer([file('f', 'x')], { xattrs: '# file: f\nuser.a=0x6869\nuser.b=0saGk=\n' }) }],
      check: (t) => {
        eq(t.xattr('f', 'user.a'), 'hi', 'user.a');
        eq(t.xattr('f', 'user.b'), 'hi', 'user.b');
      },
    },
    {
      name: 'kind-twice',
      description: 'two kind lines',
      base: base(),
      layers: [
        {
          name: L1,
          image: layer([file('x', 'x')], { editBody: (b) => b.replace('kind layer\n', 'kind layer\nkind base\n') }),
          refused: /kind/,
        },
      ],
    },
    {
      name: 'nul-in-manifest',
      description: 'a NUL byte in the manifest body',
      base: base(),
      layers: [
        { name: L1, image: layer([file('x', 'x')], { editBody: (b) => b.replace('kind layer\n', 'kind layer\0\n') }), refused: /kind|NUL/ },
      ],
    },
    {
      name: 'not-a-layer',
      description: 'a base image named like a layer',
      base: base(),
      layers: [{ name: L1, image: base(), refused: /not a layer/ }],
    },
    {
      name: 'fifo-and-directory-named-like-layers',
      description: 'a FIFO and a directory named like layers: ignored, never opened (a FIFO would block)',
      base: base(),
      layers: [
        { name: L1, image: 'fifo' },
        { name: L2, image: 'directory' },
      ],
    },
    {
      name: 'name-without-nul',
      description: 'a name whose last byte (namesize) is not NUL',
      base: base(),
      layers: [{ name: L1, image: layer([file('xy', 'x', { noNul: true })]), refused: /damaged name/ }],
      fallbackDiffers: 'busybox cpio takes the namesize bytes as the name',
    },
    {
      name: 'name-too-long',
      description: `a name of ${FORMAT.nameLimit} bytes (namesize over the limit)`,
      base: base(),
      // (busybox lists the name, which is too long for a path)
      layers: [{ name: L1, image: layer([file('n'.repeat(FORMAT.nameLimit), 'x')]), refused: /name size|unsafe name/ }],
    },
    {
      name: 'hardlink-data-twice',
      description: 'a hardlink group with two members carrying data',
      base: base(),
      layers: [
        { name: L1, image: layer([file('a', 'one', { ino: 4, nlink: 2 }), file('b', 'two', { ino: 4, nlink: 2 })]), refused: /data twice/ },
      ],
      fallbackDiffers: 'busybox cpio lists no inode numbers',
    },
    {
      name: 'symlink-target-with-nul',
      description: 'a symlink target holding a NUL byte',
      base: base(),
      layers: [{ name: L1, image: layer([symlink('s', 'ab\0cd')]), refused: /NUL/ }],
      fallbackDiffers: 'busybox cpio reads a symlink target as a C string',
    },
  ];
}
