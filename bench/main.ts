// `npm run bench`: mkma against plain references, as ratios measured in the same process
// (see stats.ts). Not part of `npm test`. Needs root (tmpfs and overlay mounts, QEMU).
//
//   npm run bench -- [--quick] [--only 1,3] [--runs N]
//
// Prints a table and writes bench/results.json. Exit status: 0 when the report was made (even
// if targets fail: it is a report), 1 when a figure could not be measured, 2 bad arguments,
// 3 not root.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { onCleanup } from '../lib/cleanup.js';
import { figure as fig1 } from './fig1-pack.js';
import { figure as fig2 } from './fig2-unpack.js';
import { figure as fig3 } from './fig3-boot.js';
import { figure as fig4 } from './fig4-persist.js';
import { figure as fig5 } from './fig5-layers.js';
import { figure as fig6 } from './fig6-build.js';
import { figure as fig7 } from './fig7-growth.js';
import { figure as fig8 } from './fig8-arm64.js';
import { figure as fig9 } from './fig9-lifecycle.js';
import type { Figure } from './figure.js';
import { Inputs } from './inputs.js';
import { errorRow, formatTable, machineFacts, writeResults, type Row } from './report.js';
import { CACHE, cleanStaleMounts, log } from './util.js';

const FIGURES: Figure[] = [fig1, fig2, fig3, fig4, fig5, fig6, fig7, fig8, fig9];

const HELP = `Usage: npm run bench -- [options]

Measures mkma against plain references (ratios, mkma and reference interleaved, medians) and
writes bench/results.json. Needs root. Inputs are cached in bench/cache/.

Options:
  --quick       small inputs, 1 run each, no fresh build (a few minutes; CI smoke check)
  --only N,M    run only these figures (see below)
  --runs N      runs per contender (default: 5, boots 3, builds 1; --quick: 1)
  -h, --help    this text

Figures:
${FIGURES.map((f) => `  ${f.id}  ${f.title}`).join('\n')}
`;

function parse(argv: string[]): { quick: boolean; only: number[] | null; runs: number | null } | null {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: 'boolean' },
      only: { type: 'string' },
      runs: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return null;
  let only: number[] | null = null;
  if (values.only !== undefined) {
    only = values.only.split(',').map((s) => Number(s.trim()));
    const bad = only.filter((n) => !FIGURES.some((f) => f.id === n));
    if (bad.length || !only.length)
      throw new Error(`--only: unknown figure(s) ${values.only} (figures: ${FIGURES.map((f) => f.id).join(', ')})`);
  }
  let runs: number | null = null;
  if (values.runs !== undefined) {
    runs = Number(values.runs);
    if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, not ${values.runs}`);
  }
  return { quick: !!values.quick, only, runs };
}

/** One benchmark at a time: they share the cache and its mount points. */
function lockCache(): (() => void) | null {
  fs.mkdirSync(CACHE, { recursive: true });
  const file = path.join(CACHE, 'bench.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch {
      const pid = Number(fs.readFileSync(file, 'utf8').trim());
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = Number.isInteger(pid) && pid > 0;
      } catch {
        /* gone */
      }
      if (alive) {
        process.stderr.write(`bench: another benchmark (pid ${pid}) is running; wait for it (lock ${file})\n`);
        return null;
      }
      fs.rmSync(file, { force: true });
    }
  }
  return null;
}

export async function main(argv: string[]): Promise<number> {
  let opts;
  try {
    opts = parse(argv);
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (!opts) {
    process.stdout.write(HELP);
    return 0;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: must run as root (it mounts tmpfs and overlay filesystems and boots QEMU)\n');
    return 3;
  }
  const started = performance.now();
  const machine = machineFacts();
  const unlock = lockCache();
  if (!unlock) return 1;
  // removed at exit, and on Ctrl-C with the mounts (lib/cleanup.ts)
  onCleanup('remove the benchmark lock', unlock);
  cleanStaleMounts(CACHE);
  const inputs = new Inputs({ quick: opts.quick, runs: opts.runs });
  const rows: Row[] = [];
  let broken = 0;
  const chosen = FIGURES.filter((f) => !opts.only || opts.only.includes(f.id));
  log(
    `${opts.quick ? 'quick' : 'full'} run of figure(s) ${chosen.map((f) => f.id).join(', ')} on ${machine.cores} cores, load ${machine.loadAverageAtStart.join(' ')}`,
  );
  for (const f of chosen) {
    const t0 = performance.now();
    log(`figure ${f.id}: ${f.title}`);
    try {
      rows.push(...(await f.run(inputs)));
      log(`figure ${f.id} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } catch (e) {
      broken++;
      log(`figure ${f.id} FAILED: ${(e as Error).stack ?? e}`);
      rows.push(errorRow(f.id, f.title, e));
    }
  }
  for (const n of inputs.notes) log(`note: ${n}`);
  const durationSec = (performance.now() - started) / 1000;
  process.stdout.write(
    `\nmkma benchmark (${opts.quick ? 'quick' : 'full'}), ${machine.cores} cores, ${(machine.memoryBytes / 2 ** 30).toFixed(0)} GiB, ${machine.kernel}, ${durationSec.toFixed(0)} s\n\n`,
  );
  process.stdout.write(formatTable(rows) + '\n');
  const file = writeResults({ mode: opts.quick ? 'quick' : 'full', runs: opts.runs, only: opts.only, machine, rows, durationSec });
  process.stdout.write(`\nresults: ${file}\n`);
  if (inputs.notes.length) process.stdout.write(inputs.notes.map((n) => `note: ${n}`).join('\n') + '\n');
  return broken ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  },
);
