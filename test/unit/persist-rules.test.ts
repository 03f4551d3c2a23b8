// persist rules: gitignore-style patterns, last match wins, directories cover their contents,
// the shipped defaults, the user's choices as rule lines, and the dpkg consistency warning.
import { afterAll, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { ChangeEntry, ChangeKind, EntryType, Rule } from '../../persist/model.js';
import {
  appendRules,
  defaultRules,
  defaultRulesPath,
  dpkgWarnings,
  escapeForPattern,
  isDirForRules,
  loadRules,
  matchRules,
  parsePattern,
  parseRules,
  ruleDecider,
  rulesFromOverrides,
  RulesError,
} from '../../persist/rules.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-rules-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

const rules = (...lines: string[]) => parseRules(lines.join('\n'), 't');
/** included? for each path ("dir/" suffix = a directory) */
const verdicts = (rs: Rule[], paths: string[]) =>
  Object.fromEntries(paths.map((p) => [p, matchRules(rs, p.replace(/\/$/, ''), p.endsWith('/')).included]));

describe('parsing', () => {
  test('comments, blank lines, negation, escapes, whitespace, line numbers as sources', () => {
    const rs = parseRules(
      ['# comment', '', '   ', '/tmp/', '!/tmp/keep', '\\#hash', '\\!bang', 'trail   ', 'sp\\ ', '  lead', '/\r'].join('\n'),
      'f.rules',
    );
    expect(rs).toEqual([
      { pattern: '/tmp/', include: false, source: 'f.rules:4' },
      { pattern: '/tmp/keep', include: true, source: 'f.rules:5' },
      { pattern: '\\#hash', include: false, source: 'f.rules:6' },
      { pattern: '\\!bang', include: false, source: 'f.rules:7' },
      { pattern: 'trail', include: false, source: 'f.rules:8' },
      { pattern: 'sp\\ ', include: false, source: 'f.rules:9' },
      { pattern: 'lead', include: false, source: 'f.rules:10' },
    ]);
    expect(verdicts(rs, ['#hash', 'a/!bang', 'sp ', 'sp', 'x/trail'])).toEqual({
      '#hash': false,
      'a/!bang': false,
      'sp ': false,
      sp: true,
      'x/trail': false,
    });
  });

  test('a lone trailing backslash is an error naming its source', () => {
    expect(() => parsePattern('abc\\', 'r:3')).toThrow(RulesError);
    expect(() => parsePattern('abc\\', 'r:3')).toThrow(/^r:3: pattern "abc\\\\" ends with a lone backslash$/);
  });
});

describe('matching', () => {
  test('no rules: everything is included, no rule decided', () => {
    expect(matchRules([], 'etc/hostname', false)).toEqual({ included: true, rule: null });
  });

  test('a name without "/" matches at any depth, and covers what is below it', () => {
    const rs = rules('*.log');
    expect(verdicts(rs, ['x.log', 'var/log/syslog.log', 'var/log/x.log/inner', 'var/log/syslog', 'x.logs'])).toEqual({
      'x.log': false,
      'var/log/syslog.log': false,
      'var/log/x.log/inner': false,
      'var/log/syslog': true,
      'x.logs': true,
    });
  });

  test('leading "/" or a "/" inside anchors to the root', () => {
    expect(verdicts(rules('/tmp'), ['tmp', 'tmp/a/b', 'var/tmp', 'tmpx'])).toEqual({
      tmp: false,
      'tmp/a/b': false,
      'var/tmp': true,
      tmpx: true,
    });
    expect(verdicts(rules('tmp'), ['tmp', 'var/tmp', 'var/tmp/x'])).toEqual({ tmp: false, 'var/tmp': false, 'var/tmp/x': false });
    expect(verdicts(rules('var/tmp'), ['var/tmp', 'x/var/tmp', 'var/tmp/f'])).toEqual({
      'var/tmp': false,
      'x/var/tmp': true,
      'var/tmp/f': false,
    });
  });

  test('trailing "/" matches directories only (and so everything inside them)', () => {
    const rs = rules('cache/');
    expect(verdicts(rs, ['home/u/cache/', 'home/u/cache', 'home/u/cache/f', 'cache/'])).toEqual({
      'home/u/cache/': false,
      'home/u/cache': true,
      'home/u/cache/f': false,
      'cache/': false,
    });
  });

  test('"*" and "?" do not cross "/", "**" does', () => {
    expect(verdicts(rules('/home/*/.cache/'), ['home/al/.cache/', 'home/al/.cache/x', 'home/a/b/.cache/', 'home/.cache/'])).toEqual({
      'home/al/.cache/': false,
      'home/al/.cache/x': false,
      'home/a/b/.cache/': true,
      'home/.cache/': true,
    });
    expect(verdicts(rules('/etc/h?sts'), ['etc/hosts', 'etc/hoosts', 'etc/h/sts'])).toEqual({
      'etc/hosts': false,
      'etc/hoosts': true,
      'etc/h/sts': true,
    });
    expect(verdicts(rules('/var/**/core'), ['var/core', 'var/a/core', 'var/a/b/core', 'core', 'x/var/core'])).toEqual({
      'var/core': false,
      'var/a/core': false,
      'var/a/b/core': false,
      core: true,
      'x/var/core': true,
    });
    expect(verdicts(rules('**/x'), ['x', 'a/x', 'a/b/x', 'a/xy'])).toEqual({ x: false, 'a/x': false, 'a/b/x': false, 'a/xy': true });
    expect(verdicts(rules('/opt/**'), ['opt/', 'opt/a', 'opt/a/b'])).toEqual({ 'opt/': true, 'opt/a': false, 'opt/a/b': false });
  });

  test('character classes, negated classes, ranges, and escaped wildcards', () => {
    expect(verdicts(rules('/f[abc]'), ['fa', 'fc', 'fd', 'f/'])).toEqual({ fa: false, fc: false, fd: true, 'f/': true });
    expect(verdicts(rules('/f[!abc]'), ['fa', 'fd', 'f/x'])).toEqual({ fa: true, fd: false, 'f/x': true });
    expect(verdicts(rules('/n[0-9][0-9]'), ['n42', 'n4x', 'n420'])).toEqual({ n42: false, n4x: true, n420: true });
    expect(verdicts(rules('/a\\*b', '/q\\?'), ['a*b', 'axb', 'q?', 'qx'])).toEqual({ 'a*b': false, axb: true, 'q?': false, qx: true });
    expect(verdicts(rules('/br[ack'), ['br[ack', 'brack'])).toEqual({ 'br[ack': false, brack: true });
  });

  test('names with newlines and bytes above 0x7f match like any others', () => {
    const nl = 'srv/a\nb';
    const latin1 = Buffer.from('srv/caf\u00e9', 'utf8').toString('latin1');
    expect(matchRules(rules('/srv/a?b'), nl, false).included).toBe(false);
    expect(matchRules(rules('/srv/*'), nl, false).included).toBe(false);
    expect(matchRules(rules(Buffer.from('/srv/caf\u00e9', 'utf8').toString('latin1')), latin1, false).included).toBe(false);
  });

  test('the last matching rule wins, and a "!" can re-include below an excluded directory', () => {
    const rs = rules('/var/cache/', '!/var/cache/keep', '/var/cache/keep/tmp/');
    expect(
      verdicts(rs, [
        'var/cache/',
        'var/cache/other',
        'var/cache/keep/',
        'var/cache/keep/x',
        'var/cache/keep/tmp/',
        'var/cache/keep/tmp/y',
        'var/x',
      ]),
    ).toEqual({
      'var/cache/': false,
      'var/cache/other': false,
      'var/cache/keep/': true,
      'var/cache/keep/x': true,
      'var/cache/keep/tmp/': false,
      'var/cache/keep/tmp/y': false,
      'var/x': true,
    });
    expect(matchRules(rules('!/a', '/a'), 'a', false)).toEqual({ included: false, rule: { pattern: '/a', include: false, source: 't:2' } });
    expect(matchRules(rules('/a', '!/a'), 'a/b', false)).toEqual({ included: true, rule: { pattern: '/a', include: true, source: 't:2' } });
  });

  test('the decision names the rule that decided', () => {
    const rs = rules('*.tmp', '/home/', '!/home/*/notes.txt');
    // "/home/" is later than "*.tmp" and covers everything below /home: it decides
    expect(matchRules(rs, '/home/bob/x.tmp', false).rule).toEqual({ pattern: '/home/', include: false, source: 't:2' });
    expect(matchRules(rs, 'srv/x.tmp', false).rule).toEqual({ pattern: '*.tmp', include: false, source: 't:1' });
    expect(matchRules(rs, 'home/bob/notes.txt', false)).toEqual({
      included: true,
      rule: { pattern: '/home/*/notes.txt', include: true, source: 't:3' },
    });
    const rs2 = rules('/home/', '!/home/*/notes.txt', '*.tmp');
    expect(matchRules(rs2, 'home/bob/notes.txt/x.tmp', false).rule).toEqual({ pattern: '*.tmp', include: false, source: 't:3' });
    expect(matchRules(rs2, 'home/bob/notes.txt/y', false).rule).toEqual({ pattern: '/home/*/notes.txt', include: true, source: 't:2' });
  });

  test('a whiteout of a directory counts as a directory for "dir/" rules', () => {
    const e = (type: EntryType, lowerType?: EntryType): ChangeEntry => ({
      path: 'var/tmp',
      kind: 'deleted',
      type,
      size: 0,
      totalSize: 0,
      mode: 0o20000,
      uid: 0,
      gid: 0,
      mtime: 0,
      xattrs: [],
      hardlinks: [],
      ...(lowerType ? { lowerType } : {}),
    });
    expect(isDirForRules(e('whiteout', 'dir'))).toBe(true);
    expect(isDirForRules(e('whiteout', 'file'))).toBe(false);
    const decide = ruleDecider(rules('/var/tmp/'));
    expect(decide(e('whiteout', 'dir')).included).toBe(false);
    expect(decide(e('whiteout', 'file')).included).toBe(true);
  });
});

describe('default rules', () => {
  test('ships next to the module and leaves out what a RAM machine should forget', () => {
    expect(fs.existsSync(defaultRulesPath())).toBe(true);
    const rs = defaultRules();
    expect(rs.every((r) => /^default:\d+$/.test(r.source))).toBe(true);
    expect(
      verdicts(rs, [
        'tmp/x',
        'var/tmp/build/',
        'run/lock/',
        'var/cache/apt/archives/x.deb',
        'var/lib/apt/lists/deb.debian.org_InRelease',
        'var/log/journal/abc/system.journal',
        'var/cache/man/index.db',
        'root/.cache/pip/',
        'home/bob/.cache/thumbs/a.png',
        'var/lib/systemd/random-seed',
        'var/lib/systemd/coredump/core.x',
        'etc/machine-id',
        'etc/hostname',
        'var/lib/dpkg/status',
        'var/log/syslog',
        'home/bob/.bashrc',
        'root/.bash_history',
        'var/cache/debconf/config.dat',
        'etc/ssh/ssh_host_ed25519_key',
      ]),
    ).toEqual({
      'tmp/x': false,
      'var/tmp/build/': false,
      'run/lock/': false,
      'var/cache/apt/archives/x.deb': false,
      'var/lib/apt/lists/deb.debian.org_InRelease': false,
      'var/log/journal/abc/system.journal': false,
      'var/cache/man/index.db': false,
      'root/.cache/pip/': false,
      'home/bob/.cache/thumbs/a.png': false,
      'var/lib/systemd/random-seed': false,
      'var/lib/systemd/coredump/core.x': false,
      'etc/machine-id': true,
      'etc/hostname': true,
      'var/lib/dpkg/status': true,
      'var/log/syslog': true,
      'home/bob/.bashrc': true,
      'root/.bash_history': true,
      'var/cache/debconf/config.dat': true,
      'etc/ssh/ssh_host_ed25519_key': true,
    });
  });

  test('loadRules: defaults, then the file (missing file: defaults only)', () => {
    const defaults = defaultRules();
    expect(loadRules(path.join(TMP, 'missing.rules'))).toEqual(defaults);
    const file = path.join(TMP, 'persist.rules');
    fs.writeFileSync(file, '# mine\n!/var/tmp/\n/srv/scratch/\n');
    const rs = loadRules(file);
    expect(rs.slice(0, defaults.length)).toEqual(defaults);
    expect(rs.slice(defaults.length)).toEqual([
      { pattern: '/var/tmp/', include: true, source: `${file}:2` },
      { pattern: '/srv/scratch/', include: false, source: `${file}:3` },
    ]);
    expect(matchRules(rs, 'var/tmp/x', false).included).toBe(true);
  });
});

describe("the user's choices as rules", () => {
  test('rulesFromOverrides: anchored, shallow first, "!" for includes, wildcards escaped', () => {
    const o = new Map<string, boolean>([
      ['var/cache/keep', true],
      ['var/cache', false],
      ['etc/a*b?[c]', true],
      ['srv/x\ny', false],
      ['srv/trailing ', true],
      ['tmp', true],
    ]);
    expect(rulesFromOverrides(o)).toEqual([
      '!/tmp',
      '!/etc/a\\*b\\?\\[c\\]',
      '!/srv/trailing\\ ',
      '/srv/x?y',
      '/var/cache',
      '!/var/cache/keep',
    ]);
    // read back, the lines decide as the overrides did
    const rs = parseRules(rulesFromOverrides(o).join('\n'), 'o');
    expect(verdicts(rs, ['var/cache/a', 'var/cache/keep/b', 'etc/a*b?[c]', 'etc/axbx', 'srv/x\ny', 'srv/trailing ', 'tmp/z'])).toEqual({
      'var/cache/a': false,
      'var/cache/keep/b': true,
      'etc/a*b?[c]': true,
      'etc/axbx': true,
      'srv/x\ny': false,
      'srv/trailing ': true,
      'tmp/z': true,
    });
    expect(matchRules(rs, 'etc/axbx', false).rule).toBeNull();
    expect(escapeForPattern('a\\b')).toBe('a\\\\b');
  });

  test('appendRules creates the file (and directory), adds a newline where one is missing', () => {
    const file = path.join(TMP, 'sub/dir/persist.rules');
    appendRules(file, ['/a', '!/b'], 'first');
    expect(fs.readFileSync(file, 'utf8')).toBe('# first\n/a\n!/b\n');
    fs.appendFileSync(file, '/no-newline');
    appendRules(file, ['/c']);
    expect(fs.readFileSync(file, 'utf8')).toBe('# first\n/a\n!/b\n/no-newline\n/c\n');
    appendRules(file, []);
    expect(fs.readFileSync(file, 'utf8')).toBe('# first\n/a\n!/b\n/no-newline\n/c\n');
  });
});

describe('dpkg consistency', () => {
  const entry = (p: string, kind: ChangeKind = 'modified', type: EntryType = 'file'): ChangeEntry => ({
    path: p,
    kind,
    type,
    size: 10,
    totalSize: 10,
    mode: 0o100644,
    uid: 0,
    gid: 0,
    mtime: 0,
    xattrs: [],
    hardlinks: [],
  });
  const entries = [
    entry('etc', 'container', 'dir'),
    entry('etc/nginx/nginx.conf', 'added'),
    entry('usr/sbin/nginx', 'added'),
    entry('usr/share/doc/nginx/copyright', 'added'),
    entry('usr/share/doc/nginx/changelog.gz', 'added'),
    entry('usr/share/doc/nginx/README', 'added'),
    entry('var/lib/dpkg/info/nginx.list', 'added'),
    entry('var/lib/dpkg/status'),
  ];

  test('status left out while package files are kept', () => {
    const w = dpkgWarnings(entries, (e) => e.path !== 'var/lib/dpkg/status');
    expect(w).toEqual([
      '/var/lib/dpkg/status changed (packages were installed, upgraded or removed) and is NOT saved, but 6 file(s) under ' +
        '/usr, /etc or /var/lib/dpkg/info are (/etc/nginx/nginx.conf, /usr/sbin/nginx, /usr/share/doc/nginx/copyright, … (6 in all)): ' +
        "after reboot dpkg's database would disagree with the files on disk. Save /var/lib/dpkg/status too, or leave out the package files.",
    ]);
  });

  test("status kept while package files are left out (the rules' decisions, one per entry)", () => {
    const dropped = new Set(['usr/sbin/nginx', 'var/lib/dpkg/info/nginx.list']);
    const expected = [
      '/var/lib/dpkg/status is saved but 2 changed file(s) under /usr or /var/lib/dpkg/info are NOT (/usr/sbin/nginx, ' +
        '/var/lib/dpkg/info/nginx.list): after reboot dpkg would list packages whose files are missing or old. Save those ' +
        'files too, or leave out /var/lib/dpkg/status.',
    ];
    expect(
      dpkgWarnings(
        entries,
        entries.map((e) => ({ included: !dropped.has(e.path), rule: null })),
      ),
    ).toEqual(expected);
    expect(dpkgWarnings(entries, (e) => !dropped.has(e.path))).toEqual(expected);
  });

  test('no warning when both go together, or when dpkg did nothing', () => {
    expect(dpkgWarnings(entries, () => true)).toEqual([]);
    expect(dpkgWarnings(entries, () => false)).toEqual([]);
    const noStatus = entries.filter((e) => e.path !== 'var/lib/dpkg/status');
    expect(dpkgWarnings(noStatus, (e) => !e.path.startsWith('usr/'))).toEqual([]);
    // an excluded /etc file alone is no package file: status kept, /etc file out → fine
    expect(dpkgWarnings(entries, (e) => e.path !== 'etc/nginx/nginx.conf')).toEqual([]);
  });
});
