// The kernel command line, split into parameters exactly as Linux does (lib/cmdline.c
// next_arg, kernel/params.c parse_args), so that `mkma persist` reads the same values as the
// init's shell parser (init/templates/lib.sh kernel_params); test/fixtures/cmdline-vectors.json
// is run against both.
//
// The kernel's rules, from its source (Documentation/admin-guide/kernel-parameters.rst: double
// quotes may enclose a value containing spaces; there is no escape for a quote):
//   - parameters are separated by whitespace outside double quotes: the kernel's isspace,
//     which is \t \n \v \f \r, space, and the byte 0xa0 (lib/ctype.c);
//   - a quote toggles "inside quotes" wherever it appears; quotes may start before the key
//     ("mkma_images_path=/my images") or after the = (mkma_images_path="/my images");
//   - the key ends at the first '=' (at index 0 it does not count: next_arg's `equals == 0`);
//   - a value starting with a quote loses it, and then the parameter's last character if that
//     is a quote; a parameter starting with a quote loses its last character if that (still)
//     is a quote. Other quotes stay in the text;
//   - a bare `--` ends the kernel's parameters (the rest is init's argv): parsing stops;
//   - hyphens and underscores are equivalent in keys (normalized here to underscores).
// Bytes, not characters: the kernel splits on the byte 0xa0 even inside a UTF-8 character.
// Give the file's bytes (readProcCmdline); keys and values are decoded as `encoding`.
import * as fs from 'node:fs';

export interface KernelParam {
  key: string;
  /** null for a parameter without '=' (a flag such as mkma_debug) */
  value: string | null;
}

const WHITESPACE = new Set([0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0xa0]);
const QUOTE = 0x22;
const EQUALS = 0x3d;

/**
 * Every parameter of a command line, in order (a later duplicate is for the caller to prefer).
 * A string is taken as `encoding` (latin1: one character per byte).
 */
export function parseKernelParams(cmdline: string | Buffer, encoding: 'utf8' | 'latin1' = 'utf8'): KernelParam[] {
  const b = typeof cmdline === 'string' ? Buffer.from(cmdline, encoding) : cmdline;
  const text = (from: number, to: number) => b.subarray(from, to).toString(encoding);
  const out: KernelParam[] = [];
  let pos = 0;
  for (;;) {
    while (pos < b.length && WHITESPACE.has(b[pos])) pos++;
    if (pos >= b.length) break;
    let start = pos;
    let quoted = false;
    let inQuote = false;
    if (b[start] === QUOTE) {
      start++;
      quoted = inQuote = true;
    }
    let end = start;
    let equals = -1;
    for (; end < b.length; end++) {
      if (WHITESPACE.has(b[end]) && !inQuote) break;
      if (equals < 0 && b[end] === EQUALS && end > start) equals = end;
      if (b[end] === QUOTE) inQuote = !inQuote;
    }
    pos = end + 1;
    // [start, last) is the parameter once the kernel has put its NULs in
    let last = end;
    let valueStart = -1;
    if (equals >= 0) {
      valueStart = equals + 1;
      if (valueStart < end && b[valueStart] === QUOTE) {
        valueStart++;
        if (b[end - 1] === QUOTE) last = end - 1;
      }
    }
    // the kernel's `quoted && args[i-1] == '"'`: only if that byte was not cut just above
    if (quoted && last === end && end > start && b[end - 1] === QUOTE) last = end - 1;
    const keyEnd = equals >= 0 ? equals : last;
    const rawKey = text(start, Math.min(keyEnd, last));
    if (equals < 0 && rawKey === '--') break;
    const key = rawKey.replace(/-/g, '_');
    if (!key) continue;
    out.push({ key, value: equals >= 0 ? text(valueStart, Math.max(valueStart, last)) : null });
  }
  return out;
}

/** The last value given for `key` (undefined: not given; null: given without '='). */
export function kernelParam(params: KernelParam[], key: string): string | null | undefined {
  let found: string | null | undefined;
  for (const p of params) if (p.key === key) found = p.value;
  return found;
}

/**
 * The command line in /proc/cmdline's contents: without the newline the kernel adds at its end
 * (inside an unterminated quote it would become part of the last value).
 */
export function procCmdline(contents: string | Buffer): Buffer {
  const b = typeof contents === 'string' ? Buffer.from(contents, 'utf8') : contents;
  return b.length && b[b.length - 1] === 0x0a ? b.subarray(0, -1) : b;
}

/** /proc/cmdline's command line, as bytes. */
export function readProcCmdline(file = '/proc/cmdline'): Buffer {
  return procCmdline(fs.readFileSync(file));
}

/**
 * `key=value` for a kernel command line, quoted when the value holds whitespace. A value with
 * a double quote cannot be written safely (the kernel has no escape, and a lone quote would
 * swallow the parameters after it): an error.
 */
export function formatKernelParam(key: string, value: string): string {
  if (value.includes('"')) throw new RangeError(`${key}=${value}: a value with a double quote cannot be put on a kernel command line`);
  return Buffer.from(value, 'utf8').some((c) => WHITESPACE.has(c)) ? `${key}="${value}"` : `${key}=${value}`;
}
