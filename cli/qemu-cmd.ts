// `mkma qemu`: boot the built image and report.
import { parse } from './args.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { COMMANDS } from './help.js';
import { createReporter } from '../lib/progress.js';

function positiveInt(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`qemu: --${name} must be a positive whole number, got "${v}"`);
  return n;
}

export async function qemuCmd(argv: string[]): Promise<number> {
  const { values } = parse('qemu', argv, {
    out: { type: 'string', short: 'o' },
    timeout: { type: 'string' },
    memory: { type: 'string' },
    cpus: { type: 'string' },
    fresh: { type: 'boolean' },
    interactive: { type: 'boolean', short: 'i' },
    json: { type: 'boolean' },
  });
  if (values.help) {
    process.stdout.write(COMMANDS.qemu);
    return EXIT.ok;
  }
  const reporter = createReporter({ quiet: !!values.json });
  const { smokeBoot, describeSmoke } = await import('../qemu/smoke.js');
  const r = await smokeBoot({
    out: values.out ?? 'mkma-out',
    reporter,
    env: process.env,
    timeoutSec: positiveInt('timeout', values.timeout, values.interactive ? 0 : 600) || undefined,
    memoryMiB: positiveInt('memory', values.memory, 2048),
    cpus: positiveInt('cpus', values.cpus, 2),
    fresh: !!values.fresh,
    interactive: !!values.interactive,
  });
  if (values.interactive) return EXIT.ok;
  if (values.json) {
    const { log: _log, ...rest } = r;
    process.stdout.write(JSON.stringify(rest, null, 2) + '\n');
  } else {
    process.stdout.write(describeSmoke(r) + '\n');
  }
  return r.ok ? EXIT.ok : EXIT.bootFailed;
}
