// Text for the terminal: raw path bytes as the screen can show them, and widths in columns as
// the terminal counts them (string-width, as Ink itself measures: wide East Asian characters
// and emoji take two columns, combining marks none), cut to fit (cli-truncate).
import cliTruncate from 'cli-truncate';
import stringWidth from 'string-width';

/** Raw latin1 bytes → text for the screen: UTF-8 when it is, control characters as '?'. */
export function displayPath(raw: string): string {
  let s = raw;
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(raw)) {
    const utf8 = Buffer.from(raw, 'latin1').toString('utf8');
    if (!utf8.includes('\uFFFD')) s = utf8;
  }
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}

/** Columns `s` takes on a terminal. */
export function textWidth(s: string): number {
  return stringWidth(s);
}

/**
 * `s` cut to at most `width` columns with "…" at `position`. cli-truncate may leave one column
 * too many when a wide character straddles the cut: then it cuts one column shorter.
 */
function truncate(s: string, width: number, position: 'middle' | 'end'): string {
  if (width <= 0) return '';
  if (stringWidth(s) <= width) return s;
  for (let w = width; w > 0; w--) {
    const out = cliTruncate(s, w, { position });
    if (stringWidth(out) <= width) return out;
  }
  return '';
}

/** Cuts the middle out of `s` ("usr/lib/…/file.so") so that it fits `width` columns. */
export function truncateMiddle(s: string, width: number): string {
  return truncate(s, width, 'middle');
}

/** Cuts the end of `s` ("long text…") to fit `width` columns. */
export function truncateEnd(s: string, width: number): string {
  return truncate(s, width, 'end');
}

export function padEnd(s: string, width: number): string {
  const w = stringWidth(s);
  return w >= width ? s : s + ' '.repeat(width - w);
}

/** One screen line: fits `width` columns exactly, padded with spaces. */
export function fitLine(s: string, width: number): string {
  return padEnd(truncateEnd(s, width), width);
}
