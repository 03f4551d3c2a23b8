// `mkma chroot`: change the images offline. The tree the boot makes (base + the layers it
// applies) is opened on the host in an overlay (persist/chroot.ts) with the chroot helpers of
// the build (builder/chroot.ts: /proc, /sys, /dev, no daemons); a shell or CMD runs in it, and
// its changes are saved as a new layer by persist's UI and writer, or discarded. With --yes the
// command's exit status decides, as `ast chroot` does in astOS: 0 saves, anything else discards.
// Persist's lock is held for the whole session: nothing else changes the images meanwhile.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';
import { createReporter, formatBytes, type Reporter } from '../lib/progress.js';
import type { ChangeEntry } from '../persist/model.js';
import type { SessionEnd } from '../persist/chroot.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';
import { STORAGE_OPTIONS, storageTarget } from './storage-target.js';

export const SPEC = {
  name: 'chroot',
  synopsis: '[--path DIR | --device DEV --path PATH] [--yes] [--message TEXT] [--json] [-- CMD [ARG…]]',
  root: true,
  positionals: { max: 100_000 },
  description: `Opens the system the images boot into on this machine, changes it, and saves the changes as a
new layer, without booting it (e.g. apt-get install into an installed stick). The tree is made
as the boot makes it: ${FILES.base} and every layer the boot applies, in boot order (mkma
unpack's code), unpacked into a private tmpfs; it is the lower layer of an overlay whose
upper layer starts empty. In the overlay, with /proc, /sys, /dev and a /run tmpfs mounted and
daemons kept from starting (policy-rc.d, as during mkma build), runs CMD, or without one a
login shell (/bin/bash -l, else /bin/sh -l). Processes left running in it are stopped after.

Then the changes (the upper layer: additions, modifications, deletions, replaced directories)
are offered in mkma persist's terminal UI, with persist's rules (its defaults, then the
image's own /etc/mkma/persist.rules); Enter saves them as a layer, q discards them. With --yes
nothing is asked: when CMD (or the shell) exits 0 the changes the rules allow are saved, and
otherwise they are discarded. Either way the overlay and the tmpfs are removed, also on Ctrl-C
and SIGTERM. The layer is written as mkma persist writes one (same manifest, the base's
data_sha256, the base's zstd level), and applies at the next boot.

Persist's lock is held from start to end: a mkma persist or mkma layers change of the same
images meanwhile fails and says so. Needs about as much free RAM as the unpacked tree.`,
  options: [
    { long: 'yes', short: 'y', help: 'ask nothing: save when CMD exits 0, discard otherwise' },
    { long: 'message', short: 'm', value: 'TEXT', help: 'the new layer\'s message (default "mkma chroot: CMD")' },
    ...STORAGE_OPTIONS,
    { long: 'quiet', short: 'q', help: 'no progress output (warnings still show)' },
    { long: 'json', help: "the result as JSON on stdout (with --yes); CMD's own output goes to stderr" },
  ],
  exitStatus: `CMD's exit status when it failed (nothing was saved); 0 after a save, and after a
session whose changes were discarded or that changed nothing (CMD exited 0); 1 the layer could
not be written; 2 bad arguments, or no terminal without --yes; 3 not root, or the storage
cannot be found or mounted.`,
  examples: [
    "sudo mkma chroot --path ./mkma-out --yes -- sh -c 'apt-get update && apt-get install -y nginx'",
    'sudo mkma chroot --yes -m "user alice" -- useradd -m alice',
    'sudo mkma chroot --device LABEL=MKMA --path /mkma',
  ],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

/** "useradd -m alice" (arguments with spaces quoted) */
const showCommand = (argv: string[]) => argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');

export async function run(argv: string[]): Promise<number> {
  const { values, positionals: cmd } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const yes = !!values.yes;
  const json = !!values.json;
  if (json && !yes) throw new UsageError('chroot: --json needs --yes (the terminal UI has no JSON)');
  if (!yes && !(process.stdin.isTTY && process.stdout.isTTY))
    throw new UsageError('chroot: no terminal to ask on: use --yes (save when CMD exits 0, discard otherwise)');
  if (!cmd.length && !process.stdin.isTTY) throw new UsageError('chroot: no terminal for a shell: give a command after --');
  requireRoot('mkma chroot', 'it mounts a tmpfs, an overlay, /proc, /sys and /dev');
  const reporter = createReporter({ quiet: !!values.quiet || json });
  const { buildUnpacker } = await import('../builder/unpacker.js');
  const unpacker = buildUnpacker({ cacheDir: process.env.MKMA_CACHE_DIR ?? '/var/cache/mkma/unpacker' }).path;
  const target = storageTarget(values);
  try {
    for (const w of target.warnings) reporter.warn(w);
    if (!fs.existsSync(path.join(target.imagesDir, FILES.base)))
      throw new UsageError(`chroot: no ${FILES.base} in ${target.description}: give the images directory (--path)`);
    const { acquireLock } = await import('../persist/write.js');
    const unlock = acquireLock(target.imagesDir, 'mkma chroot');
    try {
      const { chrootSession } = await import('../persist/chroot.js');
      const { withChroot } = await import('../builder/chroot.js');
      const { hostPathInRoot } = await import('../builder/root-path.js');
      return await chrootSession(
        { imagesDir: target.imagesDir, unpacker, reporter },
        (tree) =>
          withChroot(tree.root, (c) => {
            for (const s of [tree.applied.length ? `base + ${tree.applied.join(', ')}` : 'base alone', `in ${target.description}`])
              reporter.info(`mkma chroot: ${s}`);
            if (cmd.length) return c.attached(cmd, { stdoutToStderr: json });
            const shell = fs.existsSync(hostPathInRoot(tree.root, '/bin/bash')) ? '/bin/bash' : '/bin/sh';
            reporter.info('mkma chroot: exit the shell to save or discard the changes');
            return c.attached([shell, '-l'], { env: { PS1: '(mkma chroot) # ', debian_chroot: 'mkma chroot' } });
          }),
        async (end) => {
          const rulesFile = hostPathInRoot(end.tree.lower, '/etc/mkma/persist.rules');
          const what = cmd.length ? showCommand(cmd) : 'the shell';
          const o = { end, reporter, rulesFile, message: values.message ?? `mkma chroot: ${cmd.length ? what : 'shell'}`, what };
          const save = saver(target.imagesDir, o);
          return yes ? await saveOrDiscard(o, save, json, target.description) : await askUser(o, save);
        },
      );
    } finally {
      unlock();
    }
  } finally {
    target.release();
  }
}

interface Outcome {
  end: SessionEnd;
  reporter: Reporter;
  rulesFile: string;
  message: string;
  what: string;
}

type Save = (include: (e: ChangeEntry) => boolean) => Promise<{
  file: string;
  bytesOut: number;
  plan: import('../persist/write.js').LayerPlan;
}>;

/** Writes the chosen changes as a layer (persist's writer, the lock already held). */
function saver(imagesDir: string, o: Outcome): Save {
  return async (include) => {
    const { planLayer, writeLayer } = await import('../persist/write.js');
    const { baseLevel } = await import('../persist/compact.js');
    const { imageDataSha256 } = await import('../format/layer-info.js');
    const plan = planLayer(o.end.scan, include);
    const stage = o.reporter.stage('write', imagesDir);
    const r = await writeLayer({
      upper: o.end.tree.upper,
      scan: o.end.scan,
      include,
      plan,
      statsFromScan: true,
      imagesDir,
      level: baseLevel(imagesDir),
      message: o.message,
      // the tree was made from this directory's base, whatever the running system booted
      baseDataSha256: imageDataSha256(path.join(imagesDir, FILES.base)),
      lockHeld: true,
      onProgress: (p) => stage.count({ entries: p.entries, bytes: p.bytesIn }, { entries: plan.write.length }),
      onWarning: (m) => o.reporter.warn(m),
    });
    stage.done(`${r.entries} entries, ${formatBytes(r.bytesOut)}`);
    return { file: r.file, bytesOut: r.bytesOut, plan };
  };
}

/** --yes: CMD's status decides (0: save what the rules allow; else discard). */
async function saveOrDiscard(o: Outcome, save: Save, json: boolean, where: string): Promise<number> {
  const { status, scan } = o.end;
  const out = (obj: object, text: string) => process.stdout.write(json ? JSON.stringify(obj, null, 2) + '\n' : text + '\n');
  if (status !== 0) {
    out(
      { saved: false, reason: 'command failed', status },
      `mkma: ${o.what} exited with status ${status}: its changes were discarded (nothing saved)`,
    );
    return status;
  }
  const { loadRules, ruleDecider, dpkgWarnings } = await import('../persist/rules.js');
  const { nothingToSave, planLayer } = await import('../persist/write.js');
  const decide = ruleDecider(loadRules(o.rulesFile));
  const decisions = scan.entries.map(decide);
  for (const s of scan.skipped) o.reporter.warn(`not saved: /${s.path}: ${s.reason}`);
  for (const w of dpkgWarnings(scan.entries, decisions)) o.reporter.warn(w);
  const included = new Set(scan.entries.filter((_, i) => decisions[i].included));
  const include = (e: ChangeEntry) => included.has(e);
  const changes = scan.entries.filter((e) => e.kind !== 'container').length;
  const nothing = nothingToSave(planLayer(scan, include), changes, 'the rules', 'the chroot was opened');
  if (nothing) {
    out({ saved: false, reason: 'nothing to save', detail: nothing, status }, `mkma: nothing to save (${nothing})`);
    return EXIT.ok;
  }
  const r = await save(include);
  const { countSentence, layerCounts } = await import('../persist/counts.js');
  const name = path.basename(r.file);
  out(
    { saved: true, name, file: r.file, bytesOut: r.bytesOut, changes: r.plan.changes, deleted: r.plan.deleted.length, status },
    `mkma: saved ${countSentence(layerCounts(r.plan), r.bytesOut)}\n  ${name}\n  in ${where}\n  It applies at the next boot.`,
  );
  return EXIT.ok;
}

/** Without --yes: persist's terminal UI offers the changes; Enter saves, q discards. */
async function askUser(o: Outcome, save: Save): Promise<number> {
  const { status, scan } = o.end;
  const failed = status === 0 ? EXIT.ok : status;
  if (!scan.entries.some((e) => e.kind !== 'container')) {
    process.stdout.write(`mkma: nothing to save (no changes in the chroot)\n`);
    return failed;
  }
  if (status !== 0) o.reporter.warn(`${o.what} exited with status ${status}: its changes may be incomplete`);
  const { loadRules, ruleDecider, rulesFromOverrides } = await import('../persist/rules.js');
  const { layerCounts } = await import('../persist/counts.js');
  const { runPersistTui } = await import('../persist/tui.js');
  if (!process.stdin.isTTY) throw new EnvironmentError('chroot: the terminal is gone: nothing saved');
  const outcome = await runPersistTui({
    scan,
    decideRule: ruleDecider(loadRules(o.rulesFile)),
    rulesFile: o.rulesFile,
    rulesFromOverrides,
    onConfirm: async (include) => {
      const r = await save(include);
      return { file: r.file, counts: layerCounts(r.plan), bytesOut: r.bytesOut };
    },
  });
  if (outcome === 'saved') return EXIT.ok;
  process.stdout.write('mkma: nothing saved (the changes were discarded)\n');
  return failed;
}
