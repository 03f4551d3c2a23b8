// `mkma layers show NAME [PATH]`: what a layer changes against the state below it
// (format/layer-show.ts), with the letters of mkma persist's list; with PATH that entry, and
// for a text file a unified diff (diff -u) of the file below and the layer's.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EXIT, UsageError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import { KIND_MARK, KIND_WORD } from '../persist/kinds.js';
import { parse, printHelp, renderHelp, type CommandSpec, type SubcommandModule } from './args.js';
import { readImages, STORAGE_OPTIONS } from './storage-target.js';

const SPEC = {
  name: 'layers show',
  synopsis: 'NAME [PATH] [--path DIR | --device DEV --path P] [--json]',
  description: `Lists what a layer changes against the state below it (the base and the layers a boot
applies before it): ${KIND_MARK.added} added, ${KIND_MARK.modified} modified (contents), ${KIND_MARK.metadata} properties only (mode, owner, time),
${KIND_MARK.deleted} deleted, ${KIND_MARK.replaced} replaced directory. With PATH (a path in the system, /etc/hosts), that entry; for
a text file, a unified diff of the file below and the layer's. What lies below is unpacked into
a temporary directory (it takes as long as mkma unpack).

On the booted system, without --path, the storage is the one the system booted from (mounted
read-only if nobody has it mounted).`,
  positionals: { max: 2 },
  options: [...STORAGE_OPTIONS, { long: 'json', help: 'the entries (and the diff) as JSON on stdout' }],
  exitStatus: `0 shown, 1 the layer cannot be read, 2 bad arguments, no such layer or no such entry
in it, 3 the storage cannot be found or mounted.`,
  examples: ['sudo mkma layers show 20261122T021500Z', 'mkma layers show 20261122T021500Z /etc/hosts --path ./mkma-out'],
} as const satisfies CommandSpec;

const isText = (file: string) => {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(8192);
    return !buf.subarray(0, fs.readSync(fd, buf)).includes(0);
  } finally {
    fs.closeSync(fd);
  }
};

export const show: SubcommandModule = {
  SPEC,
  HELP: renderHelp(SPEC),
  async run(argv) {
    const { values, positionals } = parse(SPEC, argv);
    if (values.help) return printHelp(show.HELP);
    if (!positionals.length) throw new UsageError('layers show: which layer? (mkma layers show NAME [PATH]; mkma layers lists them)');
    const rel = positionals[1]?.replace(/^\/+/, '').replace(/\/+$/, '');
    const { findLayer } = await import('../format/layer-state.js');
    const { viewLayer } = await import('../format/layer-show.js');
    const { result, where } = await readImages(values, async (dir) => {
      const l = findLayer(dir, positionals[0]);
      const view = await viewLayer(dir, l.file);
      try {
        if (rel === undefined) return { layer: l.id, entries: view.entries, diff: null };
        const entry = view.entries.find((e) => e.path === rel);
        if (!entry) throw new UsageError(`layers show: layer ${l.id} changes nothing at /${rel}`);
        const below = path.join(view.below, rel);
        const mine = path.join(view.layer, rel);
        const file = (p: string) => fs.lstatSync(p, { throwIfNoEntry: false });
        let diff: string | null = null;
        const a = file(below);
        const b = file(mine);
        if (
          (entry.kind === 'modified' || entry.kind === 'added') &&
          b?.isFile() &&
          (!a || a.isFile()) &&
          isText(mine) &&
          (!a || isText(below))
        ) {
          const r = runSync('diff', ['-u', '--label', `below/${rel}`, '--label', `${l.id}/${rel}`, a ? below : '/dev/null', mine], {
            allowFailure: true,
          });
          diff = r.stdout;
        }
        return { layer: l.id, entries: [entry], diff };
      } finally {
        view.dispose();
      }
    });
    if (values.json) {
      process.stdout.write(JSON.stringify({ images: where, ...result }, null, 2) + '\n');
      return EXIT.ok;
    }
    if (!result.entries.length) process.stdout.write(`layer ${result.layer} changes nothing against what lies below it\n`);
    for (const e of result.entries)
      process.stdout.write(`${KIND_MARK[e.kind]} /${e.path}${rel !== undefined ? `  (${KIND_WORD[e.kind]})` : ''}\n`);
    if (result.diff) process.stdout.write(result.diff);
    return EXIT.ok;
  },
};
