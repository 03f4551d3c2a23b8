// Child process of figure 1's memory measurement: packs ROOT into OUT exactly as `mkma build`
// packs the base (packTree, baseExclude, level 3) and prints, as JSON, the peak resident set
// of this Node process (VmHWM) and what it packed. Alone in its process, so that nothing
// else (the harness's own heap) is counted.
//   node dist/bench/pack-child.js ROOT OUT
import * as fs from 'node:fs';
import { baseExclude } from '../builder/base.js';
import { packTree } from '../format/pack.js';

const [root, out] = process.argv.slice(2);
if (!root || !out) {
  process.stderr.write('usage: pack-child ROOT OUT\n');
  process.exit(2);
}
const t0 = performance.now();
const r = await packTree(root, out, { kind: 'base', level: 3, exclude: baseExclude });
const ms = performance.now() - t0;
const status = fs.readFileSync('/proc/self/status', 'utf8');
const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
process.stdout.write(
  JSON.stringify({
    ms,
    hwmKiB: kib('VmHWM'),
    rssKiB: kib('VmRSS'),
    entries: r.stats.entries,
    cpioBytes: r.cpioBytes,
    fileBytes: r.fileBytes,
  }) + '\n',
);
