// The init's kernel command line code under busybox, as it runs at boot: kernel_params
// against the same vectors as lib/cmdline.ts (test/unit/cmdline.test.ts), and parse_cmdline's
// checks — a bad value is reported and its default kept, never a shell arithmetic abort (as
// PID 1 that is a kernel panic).
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateInit, templatesDir } from '../../init/generate.js';
import { CMDLINE_VECTORS } from '../helpers/cmdline-vectors.js';

const VECTORS = CMDLINE_VECTORS;

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-init-cmdline-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

/** busybox sh -c SCRIPT with a command line file ($1); as at boot: no locale, no kernel log. */
function busybox(script: string, cmdline: Buffer, env: NodeJS.ProcessEnv = {}) {
  const file = path.join(TMP, 'cmdline');
  fs.writeFileSync(file, cmdline);
  return spawnSync('busybox', ['sh', '-c', script, 'sh', file], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', MKMA_NO_KMSG: '1', ...env },
    timeout: 20_000,
  });
}

describe('kernel_params (init/templates/lib.sh) under busybox', () => {
  const lib = fs.readFileSync(path.join(templatesDir(), 'lib.sh'), 'utf8');
  // each parameter as F\0KEY\0 or V\0KEY\0VALUE\0: values may hold newlines
  const driver = `${lib}
emit() { if [ $# -eq 1 ]; then printf 'F\\0%s\\0' "$1"; else printf 'V\\0%s\\0%s\\0' "$1" "$2"; fi; }
read_cmdline "$1"
kernel_params emit "$CMDLINE"
`;
  test.each(VECTORS.map((v) => [v.title, v] as const))('%s', (_title, v) => {
    // as /proc/cmdline: the line and a newline
    const r = busybox(driver, Buffer.concat([Buffer.from(v.cmdline, 'latin1'), Buffer.from('\n')]));
    expect(r.stderr.toString()).toBe('');
    expect(r.status).toBe(0);
    const fields = r.stdout.toString('latin1').split('\0').slice(0, -1);
    const got: Array<[string, string | null]> = [];
    while (fields.length) got.push(fields.shift() === 'F' ? [fields.shift()!, null] : [fields.shift()!, fields.shift()!]);
    expect(got).toEqual(v.params);
  });
});

describe('parse_cmdline (init/templates/main.sh) under busybox', () => {
  // the whole generated init without its last line (`boot`): exactly the functions that boot
  const init = generateInit({
    modules: { storage: [], filesystems: {}, overlay: [] },
    defaultRamSize: '50%',
    deviceTimeoutSec: 30,
    version: 't',
  }).replace(/\nboot\n$/, '\n');
  const show = `
read_cmdline "$1"
parse_cmdline "$CMDLINE"
echo "device=[$MKMA_DEVICE] path=[$MKMA_IMAGES_PATH] ram=$MKMA_RAM_SIZE on_error=$MKMA_ON_ERROR timeout=$MKMA_DEVICE_TIMEOUT all_after=$MKMA_ALL_STORAGE_AFTER debug=[$MKMA_DEBUG] break=[$MKMA_BREAK]"
# what boot does with them next: arithmetic must not abort the shell
_deadline=$((5 + MKMA_DEVICE_TIMEOUT)) _all=$((5 + MKMA_ALL_STORAGE_AFTER))
if storage_problem; then echo "problem: $PROBLEM"; fi
echo "base=[$MKMA_BASE_NAME] layers=[$MKMA_LAYERS]"
echo "verify=[$MKMA_VERIFY]"
echo "alive $_deadline $_all"
`;
  const parse = (cmdline: string, env: NodeJS.ProcessEnv = {}) => {
    const r = busybox(`${init}\n${show}`, Buffer.from(cmdline), env);
    const out = r.stdout.toString();
    const warnings = [...out.matchAll(/^mkma\[[\d. ]+\]: WARNING (.*)$/gm)].map((m) => m[1]);
    const state = /^device=.*$/m.exec(out)?.[0] ?? '';
    const problem = /^problem: (.*)$/m.exec(out)?.[1] ?? null;
    const base = /^base=\[(.*)\] layers=/m.exec(out)?.[1];
    const layers = /^base=.* layers=\[(.*)\]$/m.exec(out)?.[1];
    const verify = /^verify=\[(.*)\]$/m.exec(out)?.[1];
    return {
      status: r.status,
      stderr: r.stderr.toString(),
      warnings,
      state,
      problem,
      base,
      layers,
      verify,
      alive: /^alive \d+ \d+$/m.test(out),
    };
  };

  test('good values are taken, quoted ones too', () => {
    const r = parse(
      'quiet mkma_storage_device=LABEL=MKMA "mkma_images_path=/my images" mkma_ram_size=75% mkma_on_error=halt mkma_device_timeout=007 mkma_debug mkma_break=1',
    );
    expect(r.warnings).toEqual([]);
    expect(r.state).toBe('device=[LABEL=MKMA] path=[/my images] ram=75% on_error=halt timeout=7 all_after=3 debug=[1] break=[1]');
    expect(r.problem).toBeNull();
    expect(r.alive).toBe(true);
  });

  test.each([
    ['', [], 'base.cpio.zst'],
    ['mkma_base=base.g2.cpio.zst', [], 'base.g2.cpio.zst'],
    [
      'mkma_base=../base.cpio.zst',
      ['mkma_base=../base.cpio.zst is not a file name in the images directory: using base.cpio.zst'],
      'base.cpio.zst',
    ],
    ['mkma_base=/etc/shadow', ['mkma_base=/etc/shadow is not a file name in the images directory: using base.cpio.zst'], 'base.cpio.zst'],
    ['mkma_base=..', ['mkma_base=.. is not a file name in the images directory: using base.cpio.zst'], 'base.cpio.zst'],
    ['mkma_base', ['mkma_base= is not a file name in the images directory: using base.cpio.zst'], 'base.cpio.zst'],
  ])('the base a stick generation names: %s', (cmdline, warnings, base) => {
    const r = parse(`mkma_storage_device=/dev/vda ${cmdline}`);
    expect(r.warnings).toEqual(warnings);
    expect(r.base).toBe(base);
    expect(r.alive).toBe(true);
  });

  test.each([
    ['', [], 'all'],
    ['mkma_layers=none', [], 'none'],
    ['mkma_layers=all', [], 'all'],
    ['mkma_layers=2', [], '2'],
    ['mkma_layers=until=20261122T021500Z', [], 'until=20261122T021500Z'],
    ['mkma_layers=until=persistence.7@disabled.cpio.zst', [], 'until=7'],
    ['mkma_layers=until=../x', ['mkma_layers=until=../x: ../x is not a layer name: applying all layers'], 'all'],
    ['mkma_layers=-1', ['mkma_layers=-1 is not all, none, a number of layers or until=NAME: applying all layers'], 'all'],
    ['mkma_layers=1000', ['mkma_layers=1000 is not all, none, a number of layers or until=NAME: applying all layers'], 'all'],
    ['mkma_layers', ['mkma_layers= is not all, none, a number of layers or until=NAME: applying all layers'], 'all'],
  ])('which layers: %s', (cmdline, warnings, layers) => {
    const r = parse(`mkma_storage_device=/dev/vda ${cmdline}`);
    expect(r.warnings).toEqual(warnings);
    expect(r.layers).toBe(layers);
    expect(r.alive).toBe(true);
  });

  test.each([
    ['', [], '0'],
    ['mkma_verify=0', [], '0'],
    ['mkma_verify=1', [], '1'],
    ['mkma_verify', [], '1'],
    ['mkma-verify=0', [], '0'],
    ['mkma_verify=no', ['mkma_verify=no: give mkma_verify alone (or mkma_verify=1 / mkma_verify=0); ignored'], '0'],
  ])("checking the layers' data hash: %s", (cmdline, warnings, verify) => {
    const r = parse(`mkma_storage_device=/dev/vda ${cmdline}`);
    expect(r.warnings).toEqual(warnings);
    expect(r.verify).toBe(verify);
    expect(r.alive).toBe(true);
  });

  test('mkma_device_timeout=3s: a clear warning, the default kept, no arithmetic abort', () => {
    const r = parse('mkma_storage_device=/dev/vda mkma_device_timeout=3s');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.warnings).toEqual(['mkma_device_timeout=3s is not a whole number of seconds: waiting 30s']);
    expect(r.state).toMatch(/ timeout=30 /);
    expect(r.alive).toBe(true);
  });

  test.each([
    ['mkma_device_timeout=08', [], 'timeout=8 '],
    [
      'mkma_device_timeout=99999999999999999999',
      ['mkma_device_timeout=99999999999999999999 is not a whole number of seconds: waiting 30s'],
      'timeout=30 ',
    ],
    ['mkma_device_timeout=1+1', ['mkma_device_timeout=1+1 is not a whole number of seconds: waiting 30s'], 'timeout=30 '],
    ['mkma_device_timeout', ['mkma_device_timeout= is not a whole number of seconds: waiting 30s'], 'timeout=30 '],
    ['mkma_device_timeout=$(reboot)', ['mkma_device_timeout=$(reboot) is not a whole number of seconds: waiting 30s'], 'timeout=30 '],
    [
      'mkma_ram_size=50%,mode=0777',
      ['mkma_ram_size=50%,mode=0777 is not a RAM filesystem size (a percentage of RAM from 1% to 100%, or a size such as 4G): using 50%'],
      'ram=50% ',
    ],
    [
      'mkma_ram_size=101%',
      ['mkma_ram_size=101% is not a RAM filesystem size (a percentage of RAM from 1% to 100%, or a size such as 4G): using 50%'],
      'ram=50% ',
    ],
    ['mkma_ram_size=4G', [], 'ram=4G '],
    [
      'mkma_ram_size=0',
      ['mkma_ram_size=0 is not a RAM filesystem size (a percentage of RAM from 1% to 100%, or a size such as 4G): using 50%'],
      'ram=50% ',
    ],
    ['mkma_on_error=explode', ['mkma_on_error=explode is not shell, reboot or halt: using shell'], 'on_error=shell '],
    ['mkma_on_error=reboot', [], 'on_error=reboot '],
    ['mkma_debug=yes', ['mkma_debug=yes: give mkma_debug alone (or mkma_debug=1 / mkma_debug=0); ignored'], 'debug=[] '],
    ['mkma_debug mkma_debug=0', [], 'debug=[] '],
  ])('%s', (cmdline, warnings, state) => {
    const r = parse(`mkma_storage_device=/dev/vda ${cmdline}`);
    expect(r.stderr).toBe('');
    expect(r.warnings).toEqual(warnings);
    expect(r.state).toContain(state);
    expect(r.alive).toBe(true);
  });

  test('environment variables from the kernel are checked too', () => {
    const r = parse('mkma_storage_device=/dev/vda', { MKMA_ALL_STORAGE_AFTER: '3s', MKMA_ON_ERROR: 'sideways' });
    expect(r.stderr).toBe('');
    expect(r.state).toMatch(/ on_error=shell timeout=30 all_after=3 /);
    expect(r.alive).toBe(true);
  });

  test.each([
    ['mkma_storage_device=vda', 'mkma_storage_device=vda is not /dev/…, UUID=…, LABEL=…, PARTUUID=… or PARTLABEL=…'],
    ['mkma_storage_device=/dev/vda mkma_images_path=/mkma/../../etc', 'mkma_images_path=/mkma/../../etc leaves the device (it holds ..)'],
    ['mkma_storage_device=/dev/vda mkma_images_path=..', 'mkma_images_path=.. leaves the device (it holds ..)'],
    ['mkma_storage_device=/dev/vda "mkma_images_path=/a\nimages_path=/b"', 'mkma_images_path= holds control characters'],
    ['"mkma_storage_device=LABEL=x\tdevice=/dev/evil"', 'mkma_storage_device= holds control characters'],
  ])('refused before use: %s', (cmdline, problem) => {
    const r = parse(cmdline);
    expect(r.problem).toBe(problem);
    expect(r.alive).toBe(true);
  });
});
