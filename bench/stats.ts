// Medians and interleaved runs. Every timing in the report is the median of several runs in
// which mkma and its reference alternate (A B A B …) in the same process, so that a busy
// machine slows both about equally: figures are ratios, never absolute thresholds.
import { log } from './util.js';

export function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function min(xs: number[]): number {
  return xs.length ? Math.min(...xs) : NaN;
}

/** One alternative of an interleaved measurement: run() returns its own measured value. */
export interface Contender<T extends Sample = Sample> {
  name: string;
  /** does one run; untimed setup/teardown belong inside, around the measured part */
  run: (round: number) => Promise<T>;
}

export interface Sample {
  /** the measured value (milliseconds, unless the caller says otherwise) */
  value: number;
  [k: string]: unknown;
}

export interface InterleaveOptions {
  runs: number;
  /** rounds run first and thrown away (page cache, JIT) */
  warmup?: number;
  /** label for progress lines */
  label?: string;
  /** formats a value for the progress lines */
  fmt?: (v: number) => string;
}

/**
 * Runs the contenders in rounds, in order within each round (A B C, A B C, …), and returns
 * every contender's samples. Contenders are never run concurrently.
 */
export async function interleave<T extends Sample>(contenders: Array<Contender<T>>, o: InterleaveOptions): Promise<T[][]> {
  const out: T[][] = contenders.map(() => []);
  const warm = o.warmup ?? 0;
  for (let round = -warm; round < o.runs; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const c = contenders[i];
      const s = await c.run(round);
      const tag = round < 0 ? 'warm-up' : `run ${round + 1}/${o.runs}`;
      log(`  ${o.label ? o.label + ' ' : ''}${c.name} ${tag}: ${o.fmt ? o.fmt(s.value) : s.value.toFixed(1)}`);
      if (round >= 0) out[i].push(s);
    }
  }
  return out;
}

export const values = (xs: Sample[]) => xs.map((s) => s.value);

/** Times an async function (wall clock, ms). */
export async function time<T>(fn: () => Promise<T> | T): Promise<{ ms: number; result: T }> {
  const t0 = performance.now();
  const result = await fn();
  return { ms: performance.now() - t0, result };
}
