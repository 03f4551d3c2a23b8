// "Did you mean": the known name nearest to a mistyped one. One suggester for configuration
// keys, preset keys, command names and command-line options, so every typo is answered alike.

/** The known name nearest to `name` by edit distance, if near enough to be a typo; else null. */
export function closest(name: string, known: readonly string[]): string | null {
  const norm = (s: string) => s.toLowerCase().replace(/-/g, '_');
  let best: string | null = null;
  let bestD = Math.max(2, Math.floor(name.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(norm(name), norm(k));
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

/** ` (did you mean "x"?)` or '' — the hint every "unknown …" message ends with. */
export function didYouMean(name: string, known: readonly string[], show: (s: string) => string = (s) => `"${s}"`): string {
  const near = closest(name, known);
  return near === null ? '' : ` (did you mean ${show(near)}?)`;
}

/** Levenshtein distance: insertions, deletions and substitutions cost 1. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}
