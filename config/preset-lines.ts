// Where keys are in a preset's TOML text. smol-toml reports no positions for values, so the
// error messages' line numbers (and the script's first line, which maps shellcheck's and bash's
// line numbers back to the file) come from scanning the text for keys at the start of a line,
// skipping the insides of multi-line strings.

/**
 * The line of the script's first line: the line after `script = '''` when the delimiter ends
 * its line (TOML drops that newline), else the key's own line.
 */
export function scriptStartLine(text: string, keyLine: number | null): number {
  if (keyLine === null) return 1;
  const l = text.split(/\r?\n/)[keyLine - 1] ?? '';
  return /=\s*('''|""")\s*$/.test(l) ? keyLine + 1 : keyLine;
}

/**
 * Lines of keys in the source. smol-toml reports no positions for values, so this scans for
 * keys at the start of a line, skipping the insides of multi-line strings (a script's lines
 * are not keys).
 */
export class KeyLines {
  private readonly lines: string[];
  /** true for lines inside a multi-line string */
  private readonly inString: boolean[];
  /** line index from which a table header `[x]` / `[[x]]` starts a nested context */
  private readonly firstHeader: number;

  constructor(text: string) {
    this.lines = text.split(/\r?\n/);
    this.inString = [];
    let open: string | null = null;
    for (const l of this.lines) {
      const startsInside = open !== null;
      let rest = l;
      for (;;) {
        if (open) {
          const j = rest.indexOf(open);
          if (j < 0) break;
          rest = rest.slice(j + 3);
          open = null;
        } else {
          const m = /('''|""")/.exec(stripComment(rest));
          if (!m) break;
          open = m[1];
          rest = rest.slice(m.index + 3);
        }
      }
      this.inString.push(startsInside);
    }
    const h = this.lines.findIndex((l, i) => !this.inString[i] && /^\s*\[/.test(l));
    this.firstHeader = h < 0 ? this.lines.length : h;
  }

  private find(re: RegExp, from: number, to = this.lines.length): number | null {
    for (let i = from; i < to; i++) if (!this.inString[i] && re.test(this.lines[i])) return i + 1;
    return null;
  }

  /** line of a top-level key: `key =`, `key.sub =` (before any table header), `[key]`, `[[key]]` */
  top(key: string): number | null {
    const k = keyRe(key);
    return this.find(new RegExp(`^\\s*${k}\\s*[.=]`), 0, this.firstHeader) ?? this.find(new RegExp(`^\\s*\\[+\\s*${k}\\s*[\\].]`), 0);
  }

  /** line of the i-th `[[key]]` header (0-based), or null (inline arrays) */
  arrayTable(key: string, i: number): number | null {
    const re = new RegExp(`^\\s*\\[\\[\\s*${keyRe(key)}\\s*\\]\\]`);
    let n = -1;
    for (let j = 0; j < this.lines.length; j++) {
      if (!this.inString[j] && re.test(this.lines[j]) && ++n === i) return j + 1;
    }
    return null;
  }

  /** line of `key` at or after line `from` (1-based), until the next table header */
  after(from: number | null, key: string): number | null {
    if (from === null) return null;
    const l = this.lines[from - 1] ?? '';
    if (new RegExp(`[{,\\s]${keyRe(key)}\\s*=`).test(` ${l}`)) return from;
    let end = this.lines.length;
    for (let i = from; i < this.lines.length; i++)
      if (!this.inString[i] && /^\s*\[/.test(this.lines[i])) {
        end = i;
        break;
      }
    return this.find(new RegExp(`^\\s*${keyRe(key)}\\s*=`), from, end);
  }
}

function keyRe(key: string): string {
  return `["']?${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}["']?`;
}

function stripComment(l: string): string {
  // good enough for delimiter detection: a '#' outside quotes starts a comment
  let q: string | null = null;
  for (let i = 0; i < l.length; i++) {
    const c = l[i];
    if (q) {
      if (c === q) q = null;
    } else if (c === '"' || c === "'") {
      if (l.startsWith(c.repeat(3), i)) return l;
      q = c;
    } else if (c === '#') return l.slice(0, i);
  }
  return l;
}
