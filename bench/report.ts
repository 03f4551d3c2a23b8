// The benchmark's report: a table on stdout (figure, mkma value, reference value, ratio,
// target, pass/fail) and bench/results.json with the same rows, their samples and the facts
// of the machine they were measured on. A failed target is reported, not an error.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fmtBytes, fmtMs, REPO, toolVersion } from './util.js';

export type Unit = 'ms' | 'bytes' | 'KiB' | 'count';

export interface Row {
  figure: number;
  /** stable id, e.g. "1.pack-time" */
  id: string;
  /** what is measured, for people */
  what: string;
  unit: Unit;
  mkma: number | null;
  reference: number | null;
  /** what the reference is (a command, or another mkma measurement) */
  referenceLabel: string;
  /** mkma ÷ reference */
  ratio: number | null;
  /** the ratio must be ≤ this; null: informational */
  target: number | null;
  pass: boolean | null;
  status: 'measured' | 'info' | 'skipped' | 'error';
  note?: string;
  samples?: { mkma?: number[]; reference?: number[] };
}

export function ratioRow(r: Omit<Row, 'ratio' | 'pass' | 'status'> & { status?: Row['status'] }): Row {
  const ratio = r.mkma !== null && r.reference !== null && r.reference > 0 ? r.mkma / r.reference : null;
  const pass = r.target === null || ratio === null ? null : ratio <= r.target;
  return { ...r, ratio, pass, status: r.status ?? (r.target === null ? 'info' : 'measured') };
}

export function skippedRow(figure: number, id: string, what: string, note: string, target: number | null = null): Row {
  return {
    figure,
    id,
    what,
    unit: 'ms',
    mkma: null,
    reference: null,
    referenceLabel: '',
    ratio: null,
    target,
    pass: null,
    status: 'skipped',
    note,
  };
}

export function errorRow(figure: number, title: string, e: unknown): Row {
  const msg = e instanceof Error ? e.message : String(e);
  return {
    figure,
    id: `${figure}.error`,
    what: title,
    unit: 'ms',
    mkma: null,
    reference: null,
    referenceLabel: '',
    ratio: null,
    target: null,
    pass: null,
    status: 'error',
    note: msg.split('\n')[0].slice(0, 500),
  };
}

export function fmtValue(v: number | null, unit: Unit): string {
  if (v === null || Number.isNaN(v)) return '-';
  switch (unit) {
    case 'ms':
      return fmtMs(v);
    case 'bytes':
      return fmtBytes(v);
    case 'KiB':
      return fmtBytes(v * 1024);
    case 'count':
      return String(Math.round(v));
  }
}

function fmtRatio(r: number | null): string {
  return r === null || Number.isNaN(r) ? '-' : `${r.toFixed(r < 0.1 ? 3 : 2)}×`;
}

function verdict(r: Row): string {
  if (r.status === 'skipped') return 'skipped';
  if (r.status === 'error') return 'ERROR';
  if (r.pass === null) return 'info';
  return r.pass ? 'pass' : 'FAIL';
}

export function formatTable(rows: Row[]): string {
  const head = ['fig', 'measure', 'mkma', 'reference', 'ratio', 'target', 'result'];
  const body = rows.map((r) => [
    String(r.figure),
    r.what,
    fmtValue(r.mkma, r.unit),
    fmtValue(r.reference, r.unit),
    fmtRatio(r.ratio),
    r.target === null ? '' : `≤ ${r.target.toFixed(2)}×`,
    verdict(r),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i >= 2 && i <= 5 ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const b of body) out.push(line(b));
  const notes = rows.filter((r) => r.note).map((r) => `  [${r.id}] ${r.note}`);
  const refs = rows.filter((r) => r.referenceLabel).map((r) => `  [${r.id}] reference: ${r.referenceLabel}`);
  if (refs.length) out.push('', 'references:', ...refs);
  if (notes.length) out.push('', 'notes:', ...notes);
  return out.join('\n');
}

export interface MachineFacts {
  date: string;
  cores: number;
  cpuModel: string;
  memoryBytes: number;
  kernel: string;
  node: string;
  zstd: string;
  cpio: string;
  busybox: string;
  qemu: string;
  loadAverageAtStart: number[];
  loadAverageAtEnd?: number[];
}

export function machineFacts(): MachineFacts {
  return {
    date: new Date().toISOString(),
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    zstd: toolVersion('zstd', ['--version']),
    cpio: toolVersion('cpio', ['--version']),
    busybox: toolVersion('busybox', []),
    qemu: toolVersion('qemu-system-x86_64', ['--version']),
    loadAverageAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

export const RESULTS_PATH = path.join(REPO, 'bench', 'results.json');

export function writeResults(o: {
  mode: 'quick' | 'full';
  runs: number | null;
  only: number[] | null;
  machine: MachineFacts;
  rows: Row[];
  durationSec: number;
}): string {
  const doc = {
    mode: o.mode,
    runsOverride: o.runs,
    figuresRequested: o.only,
    durationSec: Math.round(o.durationSec * 10) / 10,
    machine: { ...o.machine, loadAverageAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100) },
    figures: o.rows.map((r) => ({
      figure: r.figure,
      id: r.id,
      what: r.what,
      unit: r.unit,
      mkma: r.mkma,
      reference: r.reference,
      referenceLabel: r.referenceLabel,
      ratio: r.ratio,
      target: r.target === null ? null : `<= ${r.target}`,
      targetMax: r.target,
      pass: r.pass,
      status: r.status,
      ...(r.note ? { note: r.note } : {}),
      ...(r.samples ? { samples: r.samples } : {}),
    })),
  };
  const tmp = `${RESULTS_PATH}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(tmp, RESULTS_PATH);
  return RESULTS_PATH;
}
