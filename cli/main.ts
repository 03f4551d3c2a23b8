// The `mkma` command: parses argv, calls one stage module, prints results and errors.
// Exit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 environment (not root,
// missing tools), 4 the boot test failed.
import * as os from 'node:os';
// Only what every command needs is imported here: each command loads its own modules (the
// configuration parser, the TUI, the builder…) when it runs, so `mkma persist` and `mkma --help`
// do not pay for them at start-up.
import { createReporter, formatBytes } from '../lib/progress.js';
import { EnvironmentError, EXIT, exitCodeOf, UsageError } from '../lib/errors.js';
import { parse, requireRoot } from './args.js';
import { setDebug } from '../lib/run.js';
import { COMMANDS, commandHelp, mainHelp } from './help.js';

export type CommandFn = (argv: string[]) => Promise<number>;

const buildCmd: CommandFn = async (argv) => {
  const { values, positionals } = parse('build', argv, {
    out: { type: 'string', short: 'o' },
    config: { type: 'string', short: 'c' },
    rebuild: { type: 'boolean' },
    'host-kernel': { type: 'boolean' },
    'install-deps': { type: 'boolean' },
    quiet: { type: 'boolean', short: 'q' },
    json: { type: 'boolean' },
    preset: { type: 'string', short: 'p', multiple: true },
  }, 1);
  if (values.help) return printHelp('build');
  const { BUILD_TOOLS, FAST_BOOT_PACKAGES, QEMU_TOOLS, installTools, requireTools } = await import('../lib/hosttools.js');
  const qemuTest = process.env.MKMA_QEMU_TEST === '1';
  const tools = qemuTest ? [...BUILD_TOOLS, ...QEMU_TOOLS] : BUILD_TOOLS;
  requireRoot('mkma build');
  const { loadConfig } = await import('../config/load.js');
  const config = loadConfig({ file: values.config, env: process.env, hostname: positionals[0], defaultHostname: os.hostname() });
  // every preset is checked (keys, folders, hooks, environment variables) before anything runs
  const presets = values.preset?.length ? (await import('../config/preset.js')).loadPresets(values.preset, process.env) : [];
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  if (values['install-deps']) installTools(tools, (s) => reporter.info(s), FAST_BOOT_PACKAGES);
  requireTools(tools);
  const { build } = await import('../builder/build.js');
  const out = values.out ?? 'mkma-out';
  const interactive = !values.json && !!process.stdin.isTTY && !!process.stdout.isTTY;
  const result = await build({ config, out, rebuild: !!values.rebuild, hostKernel: !!values['host-kernel'], reporter, presets, interactive });
  let boot: unknown = null;
  if (qemuTest) {
    const { smokeBoot, describeSmoke } = await import('../qemu/smoke.js');
    const { log: _log, ...r } = await smokeBoot({ out, reporter, env: process.env });
    boot = r;
    if (!values.json) process.stderr.write(describeSmoke({ ...r, log: '' }) + '\n');
    if (!r.ok) {
      if (values.json) process.stdout.write(JSON.stringify({ ...result, boot }, null, 2) + '\n');
      process.stderr.write(`mkma: the image did not boot: ${r.reason}\n  console log: ${r.logPath}\n`);
      return EXIT.bootFailed;
    }
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ ...result, boot }, null, 2) + '\n');
    return EXIT.ok;
  }
  const o = result.outputs;
  const lines = [
    '',
    `mkma: built ${result.hostname} (kernel ${result.kernelVersion}, bootstrap ${result.bootstrap})`,
    `  kernel     ${o.kernel.path}  (${formatBytes(o.kernel.bytes)})`,
    `  initramfs  ${o.initramfs.path}  (${formatBytes(o.initramfs.bytes)})`,
    `  base       ${o.base.path}  (${formatBytes(o.base.bytes)}, ${formatBytes(o.base.unpackedBytes)} in RAM, ${o.base.entries} entries)`,
    ...(presets.length
      ? ['', 'Stages:', ...result.stages.map((s) => `  ${s.stage}: ${s.status}`),
        `  (${result.cache.snapshots} snapshot(s), ${formatBytes(result.cache.bytes)}, in ${out}/.cache for rebuilds)`]
      : []),
    '',
    'Kernel command line:',
    `  ${result.cmdline}`,
  ];
  if (result.storage) {
    lines.push(`  (the images are on ${result.storage.source}, ${result.storage.fstype}, mounted at ${result.storage.mountpoint})`);
    lines.push('', 'GRUB (e.g. /etc/grub.d/40_custom, then update-grub):', result.grub!, '', 'systemd-boot:', result.systemdBoot!);
  } else {
    lines.push('  (the output directory is not on a block device: copy the images to the boot disk and use its UUID)');
  }
  if (!qemuTest) lines.push('', 'Try it in a VM: mkma qemu --out ' + out);
  process.stdout.write(lines.join('\n') + '\n');
  return EXIT.ok;
};

const unpackCmd: CommandFn = async (argv) => {
  const { values } = parse('unpack', argv, {
    images: { type: 'string', short: 'i' },
    into: { type: 'string' },
    json: { type: 'boolean' },
    extractor: { type: 'string' },
  });
  if (values.help) return printHelp('unpack');
  const extractor = values.extractor ?? 'auto';
  if (!['auto', 'native', 'ts'].includes(extractor)) throw new UsageError(`unpack: --extractor is auto, native or ts, not ${extractor}`);
  if (!values.images || !values.into) throw new UsageError('unpack: --images DIR and --into DIR are required');
  requireRoot('mkma unpack');
  const fs = await import('node:fs');
  if (fs.existsSync(values.into) && fs.readdirSync(values.into).length) {
    throw new UsageError(`unpack: ${values.into} is not empty (mkma unpack builds a tree from scratch)`);
  }
  const { unpackImages } = await import('../format/apply.js');
  let unpacker: string | null = null;
  if (extractor !== 'ts') {
    // the initramfs' own extractor, compiled once and cached (builder/unpacker.ts)
    const { buildUnpacker } = await import('../builder/unpacker.js');
    const u = buildUnpacker({ cacheDir: process.env.MKMA_CACHE_DIR ?? '/var/cache/mkma/unpacker' });
    if (!u.path && extractor === 'native') throw new EnvironmentError(`unpack: mkma-unpack cannot be built here: ${u.reason}`);
    if (!u.path && !values.json) process.stderr.write(`note: using the TypeScript extractor (mkma-unpack: ${u.reason})\n`);
    unpacker = u.path;
  }
  const report = await unpackImages(values.images, values.into, (r) => {
    if (!values.json) {
      process.stderr.write(r.applied ? `applied ${r.file} (${r.entries} entries, ${r.deleted} removed)\n` : `LAYER SKIPPED ${r.file}: ${r.reason}\n`);
      for (const w of r.warnings) process.stderr.write(`warning: ${r.file}: ${w}\n`);
    }
  }, unpacker);
  if (!values.json) for (const w of [...report.base.warnings, ...report.warnings]) process.stderr.write(`warning: ${w}\n`);
  if (values.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else process.stderr.write(`unpacked base (${report.base.entries} entries) and ${report.layers.filter((l) => l.applied).length} layer(s) into ${values.into}\n`);
  return report.layers.some((l) => !l.applied) ? EXIT.failed : EXIT.ok;
};

async function printHelp(cmd?: string): Promise<number> {
  process.stdout.write(cmd ? await commandHelp(cmd) : mainHelp());
  return EXIT.ok;
}

export async function main(argvIn: string[]): Promise<number> {
  // --debug, anywhere: every command mkma runs is logged (lib/run.ts), and stack traces shown
  const argv = argvIn.filter((a) => a !== '--debug');
  if (argv.length !== argvIn.length) {
    process.env.MKMA_DEBUG = '1';
    setDebug(true);
  }
  const [cmd, ...rest] = argv;
  try {
    if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') return printHelp(rest[0] && rest[0] in COMMANDS ? rest[0] : undefined);
    if (cmd === '--version' || cmd === '-V') {
      const { mkmaVersion } = await import('../builder/build.js');
      process.stdout.write(`mkma ${mkmaVersion()}\n`);
      return EXIT.ok;
    }
    const table: Record<string, CommandFn> = {
      build: buildCmd,
      unpack: unpackCmd,
      qemu: async (a) => (await import('./qemu-cmd.js')).qemuCmd(a),
      persist: async (a) => (await import('./persist-cmd.js')).persistCmd(a),
      lint: async (a) => (await import('./lint-cmd.js')).lintCmd(a),
    };
    const fn = table[cmd];
    if (!fn) throw new UsageError(`unknown command "${cmd}"; commands: ${Object.keys(COMMANDS).join(', ')} (mkma --help)`);
    return await fn(rest);
  } catch (e) {
    return reportError(e);
  }
}

export function reportError(e: unknown): number {
  const err = e as Error;
  process.stderr.write(`mkma: ${err?.message ?? String(e)}\n`);
  const code = exitCodeOf(e);
  if (code === EXIT.failed && process.env.MKMA_DEBUG) process.stderr.write(`${err?.stack}\n`);
  return code;
}
