// Which upperdir changes `mkma persist` keeps: gitignore-style rules, exclude unless negated.
//
//   # comment            blank lines are ignored
//   /tmp/                leading "/" anchors the pattern to the root; trailing "/" = directories only
//   *.swp                no "/" (other than a trailing one): matches the name at any depth
//   /home/*/.cache/      "*" and "?" never cross "/", "[abc]" / "[!a-z]" are character classes
//   /var/**/core         "**" crosses directories ("a/**/b", "**/x", "x/**")
//   !/tmp/keep-me        "!" includes (a negated rule)
//   \#name  \!name       a backslash makes the next character literal ("\ " keeps a trailing space)
//
// Matching: a rule that matches a directory also applies to everything below it, and the LAST
// rule that matches a path or one of its parent directories decides. Unlike git, a later "!"
// rule can re-include a path below an excluded directory (`/var/cache/` then `!/var/cache/foo`):
// in a persist rules file that is what the user means. No rule matched = included.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChangeEntry, Decision, Include, Overrides, Rule } from './model.js';
import { UsageError } from '../lib/errors.js';

export class RulesError extends UsageError {}

interface Compiled {
  re: RegExp;
  dirOnly: boolean;
}

const compiledCache = new WeakMap<Rule, Compiled>();

/** One pattern line → a rule (null for comments and blank lines). `source` is kept as given. */
export function parsePattern(line: string, source: string): Rule | null {
  let text = line.replace(/\r$/, '');
  // Trailing whitespace goes unless escaped; leading whitespace goes too (hand-edited files).
  text = text.replace(/(?<!\\)\s+$/, '').replace(/^\s+/, '');
  if (text === '' || text.startsWith('#')) return null;
  let include = false;
  if (text.startsWith('!')) {
    include = true;
    text = text.slice(1);
  }
  if (text === '' || text === '/') return null;
  compile(text, source); // reject bad patterns early, with the source in the message
  return { pattern: text, include, source };
}

/** The rules of a file's text; each rule's source is `SOURCE:LINE`. */
export function parseRules(text: string, source: string): Rule[] {
  const rules: Rule[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const r = parsePattern(lines[i], `${source}:${i + 1}`);
    if (r) rules.push(r);
  }
  return rules;
}

function compiled(rule: Rule): Compiled {
  let c = compiledCache.get(rule);
  if (!c) {
    c = compile(rule.pattern, rule.source);
    compiledCache.set(rule, c);
  }
  return c;
}

const REGEX_SPECIAL = /[.*+?^${}()|[\]\\/]/;

/** A glob segment (no "/") → regex source. */
function segmentRegex(seg: string, pattern: string, source: string): string {
  let out = '';
  for (let i = 0; i < seg.length; i++) {
    const ch = seg[i];
    if (ch === '\\') {
      const next = seg[i + 1];
      if (next === undefined) throw new RulesError(`${source}: pattern ${JSON.stringify(pattern)} ends with a lone backslash`);
      out += REGEX_SPECIAL.test(next) ? '\\' + next : next;
      i++;
    } else if (ch === '*') {
      while (seg[i + 1] === '*') i++;
      out += '[^/]*';
    } else if (ch === '?') {
      out += '[^/]';
    } else if (ch === '[') {
      const end = classEnd(seg, i);
      if (end < 0) {
        out += '\\[';
        continue;
      }
      let body = seg.slice(i + 1, end);
      let negate = false;
      if (body.startsWith('!') || body.startsWith('^')) {
        negate = true;
        body = body.slice(1);
      }
      // Inside the class only "\", "]" and "^" need care; a leading "]" is literal.
      let cls = '';
      for (let j = 0; j < body.length; j++) {
        const c = body[j];
        if (c === '\\' && j + 1 < body.length) {
          cls += '\\' + body[++j];
        } else if (c === '\\' || c === ']' || c === '^' || c === '[') {
          cls += '\\' + c;
        } else {
          cls += c;
        }
      }
      out += negate ? `[^/${cls}]` : `[${cls}]`;
      i = end;
    } else {
      out += REGEX_SPECIAL.test(ch) ? '\\' + ch : ch;
    }
  }
  return out;
}

/** Index of the "]" closing the class opened at `start`, or -1. */
function classEnd(seg: string, start: number): number {
  let j = start + 1;
  if (seg[j] === '!' || seg[j] === '^') j++;
  if (seg[j] === ']') j++; // a leading "]" is part of the class
  for (; j < seg.length; j++) {
    if (seg[j] === '\\') j++;
    else if (seg[j] === ']') return j;
  }
  return -1;
}

function compile(pattern: string, source: string): Compiled {
  let p = pattern;
  let dirOnly = false;
  while (p.endsWith('/') && !p.endsWith('\\/')) {
    dirOnly = true;
    p = p.slice(0, -1);
  }
  // Anchored: a leading "/" or any "/" inside. Otherwise the name matches at any depth.
  const anchored = p.includes('/');
  p = p.replace(/^\/+/, '');
  if (p === '') throw new RulesError(`${source}: empty pattern ${JSON.stringify(pattern)}`);
  const segs = p.split('/');
  let re = anchored ? '' : '(?:.*/)?';
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i];
    const last = i === segs.length - 1;
    if (seg === '**') {
      // "x/**": everything inside x; "**/" and "/**/": zero or more directories
      re += last ? '.*' : '(?:.*/)?';
      continue;
    }
    re += segmentRegex(seg, pattern, source);
    if (!last) re += '/';
  }
  return { re: new RegExp(`^${re}$`, 's'), dirOnly };
}

/** Does the rule match exactly this path (not counting its parents)? */
export function ruleMatchesPath(rule: Rule, relPath: string, isDir: boolean): boolean {
  const c = compiled(rule);
  if (c.dirOnly && !isDir) return false;
  return c.re.test(relPath);
}

/**
 * Matches many paths against one rule list, remembering per directory which rule was the last
 * to match it or one of its parents (a persist scan asks about every path of the upperdir).
 */
export class RuleMatcher {
  /** directory path → index of the last rule matching it or a parent (-1: none) */
  private readonly dirs = new Map<string, number>();

  constructor(readonly rules: readonly Rule[]) {}

  private lastSelfMatch(relPath: string, isDir: boolean, above: number): number {
    for (let i = this.rules.length - 1; i > above; i--) {
      if (ruleMatchesPath(this.rules[i], relPath, isDir)) return i;
    }
    return above;
  }

  private dirIndex(dir: string): number {
    if (dir === '') return -1;
    const cached = this.dirs.get(dir);
    if (cached !== undefined) return cached;
    const slash = dir.lastIndexOf('/');
    const above = this.dirIndex(slash < 0 ? '' : dir.slice(0, slash));
    const idx = this.lastSelfMatch(dir, true, above);
    this.dirs.set(dir, idx);
    return idx;
  }

  match(pathIn: string, isDir: boolean): Decision {
    const rel = pathIn.replace(/^\/+/, '').replace(/\/+$/, '');
    if (rel === '') return { included: true, rule: null };
    const slash = rel.lastIndexOf('/');
    const above = this.dirIndex(slash < 0 ? '' : rel.slice(0, slash));
    const idx = isDir ? this.dirIndex(rel) : this.lastSelfMatch(rel, false, above);
    const rule = idx >= 0 ? this.rules[idx] : null;
    return { included: rule ? rule.include : true, rule };
  }
}

const matchers = new WeakMap<readonly Rule[], RuleMatcher>();

/**
 * The decision for one path ("etc/hostname" or "/etc/hostname"): the last rule that matches
 * the path or one of its parent directories wins; none = included.
 */
export function matchRules(rules: readonly Rule[], relPath: string, isDir: boolean): Decision {
  let m = matchers.get(rules);
  if (!m || m.rules.length !== rules.length) {
    m = new RuleMatcher([...rules]);
    matchers.set(rules, m);
  }
  return m.match(relPath, isDir);
}

/**
 * Whether rules see an entry as a directory ("dir/" patterns): directories, and the whiteout
 * or opaque directory standing for a directory of the lower tree.
 */
export function isDirForRules(e: ChangeEntry): boolean {
  return e.type === 'dir' || (e.type === 'whiteout' && e.lowerType === 'dir');
}

/** The rules' decision for scan entries, cached per directory (a scan asks about every path). */
export function ruleDecider(rules: readonly Rule[]): (e: ChangeEntry) => Decision {
  const m = new RuleMatcher([...rules]);
  return (e) => m.match(e.path, isDirForRules(e));
}

/** persist/default.rules, next to this module in the sources and from dist/persist. */
export function defaultRulesPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'default.rules'), path.join(here, '..', '..', 'persist', 'default.rules')];
  for (const c of candidates) if (fs.existsSync(c)) return c;
  throw new RulesError(`persist/default.rules not found next to ${here} (broken installation)`);
}

export function defaultRules(): Rule[] {
  return parseRules(fs.readFileSync(defaultRulesPath(), 'utf8'), 'default');
}

/** The defaults followed by the rules of `file` (which win); a missing file adds nothing. */
export function loadRules(file: string | null): Rule[] {
  const rules = defaultRules();
  if (!file) return rules;
  let text: string;
  try {
    text = fs.readFileSync(file, 'latin1');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return rules;
    throw new RulesError(`cannot read rules file ${file}: ${(e as Error).message}`);
  }
  return [...rules, ...parseRules(text, file)];
}

/** A raw path (latin1) as a pattern that matches only itself, anchored. */
export function escapeForPattern(relPath: string): string {
  let out = '';
  for (const ch of relPath) {
    const c = ch.charCodeAt(0);
    if (c < 0x20 || c === 0x7f)
      out += '?'; // a line cannot hold a control byte: "?" stands for it
    else if ('*?[]\\'.includes(ch)) out += '\\' + ch;
    else out += ch;
  }
  // trailing whitespace would be trimmed
  return out.replace(/\s$/, (s) => '\\' + s);
}

/**
 * The user's choices as rule lines, shallow paths first so that a deeper choice (a later
 * line) wins, as it does in the UI: `/path` excludes, `!/path` includes.
 */
export function rulesFromOverrides(overrides: Overrides): string[] {
  const items = [...overrides.entries()].map(([p, inc]) => ({ p: p.replace(/^\/+/, ''), inc })).filter((x) => x.p !== '');
  items.sort((a, b) => {
    const da = a.p.split('/').length;
    const db = b.p.split('/').length;
    if (da !== db) return da - db;
    return a.p < b.p ? -1 : a.p > b.p ? 1 : 0;
  });
  return items.map(({ p, inc }) => `${inc ? '!' : ''}/${escapeForPattern(p)}`);
}

/** Appends rule lines to a rules file (created with its directory if needed). */
export function appendRules(file: string, lines: string[], comment?: string): void {
  if (!lines.length) return;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  let prefix = '';
  try {
    const cur = fs.readFileSync(file);
    if (cur.length && cur[cur.length - 1] !== 0x0a) prefix = '\n';
  } catch {
    /* new file */
  }
  const head = comment ? `# ${comment.replace(/\n/g, ' ')}\n` : '';
  fs.appendFileSync(file, Buffer.from(prefix + head + lines.join('\n') + '\n', 'latin1'));
}

const DPKG_STATUS = 'var/lib/dpkg/status';
const isPackageFile = (p: string) => p.startsWith('usr/') || p.startsWith('var/lib/dpkg/info/');
const isPackageOrConf = (p: string) => isPackageFile(p) || p.startsWith('etc/');

/**
 * dpkg's database (/var/lib/dpkg/status) and the files it describes must be saved together:
 * keeping one without the other leaves, after reboot, packages that dpkg thinks are installed
 * without their files, or files of packages dpkg does not know (apt then breaks or overwrites).
 * Only says something when the status file itself changed (a package was installed, removed
 * or upgraded); a hand-edited /etc file alone is no dpkg operation.
 */
export function dpkgWarnings(entries: readonly ChangeEntry[], decisions: Include | readonly Decision[]): string[] {
  // the rules' decisions, one per entry (persist --yes), or the final Include (the UI's)
  const included =
    typeof decisions === 'function' ? (e: ChangeEntry) => decisions(e) : (_e: ChangeEntry, i: number) => decisions[i].included;
  let status: { inc: boolean } | null = null;
  const kept: string[] = [];
  const dropped: string[] = [];
  entries.forEach((e, i) => {
    if (e.path === DPKG_STATUS && e.kind !== 'container') {
      status = { inc: included(e, i) };
      return;
    }
    if (e.kind === 'container' || e.type === 'dir') return;
    const inc = included(e, i);
    if (inc && isPackageOrConf(e.path)) kept.push(e.path);
    if (!inc && isPackageFile(e.path)) dropped.push(e.path);
  });
  const st = status as { inc: boolean } | null;
  if (!st) return [];
  const sample = (list: string[]) =>
    list
      .slice(0, 3)
      .map((p) => '/' + p)
      .join(', ') + (list.length > 3 ? `, … (${list.length} in all)` : '');
  if (!st.inc && kept.length) {
    return [
      `/var/lib/dpkg/status changed (packages were installed, upgraded or removed) and is NOT saved, ` +
        `but ${kept.length} file(s) under /usr, /etc or /var/lib/dpkg/info are (${sample(kept)}): after reboot ` +
        `dpkg's database would disagree with the files on disk. Save /var/lib/dpkg/status too, or leave out the package files.`,
    ];
  }
  if (st.inc && dropped.length) {
    return [
      `/var/lib/dpkg/status is saved but ${dropped.length} changed file(s) under /usr or /var/lib/dpkg/info are NOT ` +
        `(${sample(dropped)}): after reboot dpkg would list packages whose files are missing or old. ` +
        `Save those files too, or leave out /var/lib/dpkg/status.`,
    ];
  }
  return [];
}
