// `mkma layers disable|enable|pin|unpin|bless NAME` and `mkma layers rollback [NAME]`: state
// changes, each a rename of the layer's file (format/layer-state.ts: atomic, fsynced), under
// persist's lock, on the booted system's storage or --path / --device.
import { LAYER_STATE, RUNTIME } from '../lib/contract.js';
import { EXIT, UsageError } from '../lib/errors.js';
import type { LayerName, LayerState } from '../format/names.js';
import { parse, printHelp, renderHelp, type CommandSpec, type SubcommandModule } from './args.js';
import { changeImages, readIf, STORAGE_OPTIONS } from './storage-target.js';

export interface StateChange {
  id: string;
  from: string;
  to: string;
}

const COMMON = [...STORAGE_OPTIONS, { long: 'json', help: 'what changed as JSON on stdout' }] as const;

const EXIT_STATUS = `0 done (also when the layer was in that state already), 1 a rename failed, 2 bad
arguments or no such layer, 3 the storage cannot be found or mounted read-write.`;

const WHERE = `On the booted system, without --path, the storage is the one the system booted from (as
mkma persist finds it, mounted read-write only meanwhile). NAME is the layer's id
(20261122T021500Z) or its file name in any state, as mkma layers shows it.`;

/** A state change of one layer: the new state from the old (null: refused, with why). */
type Transition = (l: LayerName, values: Record<string, unknown>) => LayerState | string;

function describe(l: LayerState): string {
  if (l.status === 'trial') return `on trial (${l.triesLeft} left)`;
  if (l.status === 'failed') return `failed (${l.triesDone} tries)`;
  return l.status + (l.pinned ? ', pinned' : '');
}

function report(values: { json?: boolean }, where: string, changes: StateChange[], verb: string): number {
  if (values.json) process.stdout.write(JSON.stringify({ images: where, changed: changes }, null, 2) + '\n');
  else if (!changes.length) process.stdout.write(`nothing to ${verb} in ${where}\n`);
  else
    for (const c of changes) process.stdout.write(c.from === c.to ? `${c.id}: already so (${c.to})\n` : `${c.id}: ${c.from} → ${c.to}\n`);
  return EXIT.ok;
}

function stateCommand(
  name: string,
  help: string,
  transition: Transition,
  extra: CommandSpec['options'] = [],
  examples: string[] = [],
): SubcommandModule {
  const SPEC: CommandSpec = {
    name: `layers ${name}`,
    synopsis: `NAME [--path DIR | --device DEV --path PATH] [--json]`,
    description: `${help}\n\n${WHERE}`,
    positionals: { max: 1 },
    options: [...extra, ...COMMON],
    exitStatus: EXIT_STATUS,
    examples: examples.length
      ? examples
      : [`sudo mkma layers ${name} 20261122T021500Z`, `mkma layers ${name} 20261122T021500Z --path ./mkma-out`],
  };
  const HELP = renderHelp(SPEC);
  return {
    SPEC,
    HELP,
    async run(argv) {
      const { values, positionals } = parse(SPEC, argv);
      if (values.help) return printHelp(HELP);
      if (positionals.length !== 1) throw new UsageError(`layers ${name}: which layer? (mkma layers ${name} NAME; mkma layers lists them)`);
      const { findLayer, setLayerState } = await import('../format/layer-state.js');
      const { result, where } = await changeImages(values, `mkma layers ${name}`, (dir) => {
        const l = findLayer(dir, positionals[0]);
        const to = transition(l, values);
        if (typeof to === 'string') throw new UsageError(`layers ${name} ${l.id}: ${to}`);
        setLayerState(dir, l, to);
        return [{ id: l.id, from: describe(l), to: describe(to) }];
      });
      return report(values, where, result, name);
    },
  };
}

const active = (l: LayerState, pinned = l.pinned): LayerState => ({ status: 'active', pinned, triesLeft: 0, triesDone: 0 });

export const disable = stateCommand(
  'disable',
  'Takes the layer out of boot order, reversibly (mkma layers enable puts it back): its file is\nrenamed to …@disabled, its data stays as it is.',
  (l) => ({ ...l, status: 'disabled', triesLeft: 0, triesDone: 0 }),
);

export const enable = stateCommand('enable', 'Puts a disabled layer back into boot order (active).', (l) =>
  l.status === 'disabled' || l.status === 'active' ? active(l) : `it is ${describe(l)}: mkma layers bless accepts it`,
);

export const pin = stateCommand('pin', 'Pins the layer: mkma layers prune never removes it (its status stays as it is).', (l) => ({
  ...l,
  pinned: true,
}));

export const unpin = stateCommand('unpin', 'Unpins the layer: mkma layers prune may remove it again once it is disabled.', (l) => ({
  ...l,
  pinned: false,
}));

const TRIES_OPTION = {
  long: 'tries',
  value: 'N',
  help: `instead of accepting it: put it on trial again, with N boots (1-${LAYER_STATE.maxTries}) to be marked good`,
} as const;

function bless(l: LayerName, values: Record<string, unknown>): LayerState | string {
  if (l.status === 'disabled') return 'it is disabled: mkma layers enable puts it back';
  if (values.tries === undefined) return active(l);
  const n = Number(values.tries);
  if (!/^[1-9]$/.test(String(values.tries)) || n > LAYER_STATE.maxTries) {
    return `--tries ${String(values.tries)}: give a number of boots from 1 to ${LAYER_STATE.maxTries}`;
  }
  return { status: 'trial', pinned: l.pinned, triesLeft: n, triesDone: 0 };
}

const blessOne = stateCommand(
  'bless',
  `Marks a layer on trial (or failed) good by hand: active, applied at every boot. With --tries N,
puts it on trial again instead. A boot that reaches multi-user does this for the layers it
applied on trial (mkma-boot-good.service runs mkma layers bless --booted).`,
  bless,
  [
    TRIES_OPTION,
    { long: 'booted', help: `every layer on trial that this boot applied (what the init recorded in ${RUNTIME.layersRecord})` },
  ],
  [
    'sudo mkma layers bless 20261122T021500Z',
    'sudo mkma layers bless --booted',
    'mkma layers bless 20261122T021500Z --tries 3 --path ./mkma-out',
  ],
);

/** bless NAME, or bless --booted: the layers the init applied on trial at this boot. */
export const blessCmd: SubcommandModule = {
  SPEC: blessOne.SPEC,
  HELP: blessOne.HELP,
  async run(argv, context) {
    if (!argv.includes('--booted')) return blessOne.run(argv, context);
    const { values, positionals } = parse(blessOne.SPEC!, argv);
    if (positionals.length) throw new UsageError('layers bless: --booted or NAME, not both');
    const { parseBootRecord } = await import('../format/layer-info.js');
    const { parseLayerName } = await import('../format/names.js');
    const { layersIn, setLayerState } = await import('../format/layer-state.js');
    const text = readIf(RUNTIME.layersRecord);
    if (text === undefined) throw new UsageError(`layers bless --booted: no ${RUNTIME.layersRecord} (is this a system booted by mkma?)`);
    const record = parseBootRecord(text);
    // nothing applied on trial at this boot (the usual case): nothing to mount or rename
    if (![...record.values()].some((r) => r.applied && parseLayerName(r.name)?.status === 'trial')) {
      return report(values as { json?: boolean }, 'this boot', [], 'bless');
    }
    const { result, where } = await changeImages(values as { path?: string; device?: string; json?: boolean }, 'mkma layers bless', (dir) =>
      layersIn(dir)
        .filter((l) => l.status === 'trial' && record.get(l.id)?.applied)
        .map((l) => {
          const to = active(l);
          setLayerState(dir, l, to);
          return { id: l.id, from: describe(l), to: describe(to) };
        }),
    );
    return report(values as { json?: boolean }, where, result, 'bless');
  },
};

const ROLLBACK_SPEC: CommandSpec = {
  name: 'layers rollback',
  synopsis: '[NAME] [--path DIR | --device DEV --path PATH] [--json]',
  description: `Disables every layer after NAME, reversibly (mkma layers enable puts one back); without
NAME, the newest layer a boot applies. The next boot is the system as it was when NAME was
saved. The layers are disabled newest first: a crash on the way leaves a rollback to a later
point, never a gap.

${WHERE}`,
  positionals: { max: 1 },
  options: COMMON,
  exitStatus: EXIT_STATUS,
  examples: ['sudo mkma layers rollback', 'sudo mkma layers rollback 20261122T021500Z', 'mkma layers rollback --path ./mkma-out --json'],
};

export const rollback: SubcommandModule = {
  SPEC: ROLLBACK_SPEC,
  HELP: renderHelp(ROLLBACK_SPEC),
  async run(argv) {
    const { values, positionals } = parse(ROLLBACK_SPEC, argv);
    if (values.help) return printHelp(rollback.HELP);
    const { findLayer, layersIn, setLayerState } = await import('../format/layer-state.js');
    const { appliedAtBoot } = await import('../format/names.js');
    const { result, where } = await changeImages(values, 'mkma layers rollback', (dir) => {
      const all = layersIn(dir);
      let after: LayerName[];
      if (positionals.length) {
        const at = findLayer(dir, positionals[0]);
        after = all.slice(all.findIndex((l) => l.id === at.id) + 1).filter((l) => l.status !== 'disabled');
      } else {
        const newest = all.filter(appliedAtBoot).pop();
        after = newest ? [newest] : [];
      }
      return after.reverse().map((l) => {
        const to: LayerState = { ...l, status: 'disabled', triesLeft: 0, triesDone: 0 };
        setLayerState(dir, l, to);
        return { id: l.id, from: describe(l), to: describe(to) };
      });
    });
    return report(values, where, result, 'roll back');
  },
};
