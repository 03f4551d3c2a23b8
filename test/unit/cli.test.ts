// The CLI's surface: every command answers --help from its own module, `mkma --help` lists
// every command of the one table, and errors become exit statuses.
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { COMMANDS, main } from '../../cli/main.js';

let out: string;
let err: string;
beforeEach(() => {
  out = '';
  err = '';
  jest.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  jest.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
});
afterEach(() => {
  jest.restoreAllMocks();
});

describe('mkma --help', () => {
  test('lists every command with its summary', async () => {
    expect(await main(['--help'])).toBe(0);
    for (const [name, c] of Object.entries(COMMANDS))
      expect(out).toMatch(new RegExp(`^  ${name} +${c.summary.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
    expect(Object.keys(COMMANDS).sort()).toEqual(['build', 'lint', 'persist', 'qemu', 'unpack']);
  });

  test.each(Object.keys(COMMANDS))("%s: --help and `mkma help` print the command's own text", async (name) => {
    const { HELP } = await COMMANDS[name].load();
    expect(HELP).toMatch(new RegExp(`^Usage: (sudo )?mkma ${name}\\b`));
    expect(await main([name, '--help'])).toBe(0);
    expect(out).toBe(HELP);
    out = '';
    expect(await main(['help', name])).toBe(0);
    expect(out).toBe(HELP);
    expect(err).toBe('');
  });
});

describe('errors', () => {
  test('an unknown command is a usage error (exit 2) naming the commands', async () => {
    expect(await main(['frobnicate'])).toBe(2);
    expect(err).toMatch(/unknown command "frobnicate"; commands: build, qemu, unpack, persist, lint/);
  });

  test('an unknown option is a usage error naming the command', async () => {
    expect(await main(['unpack', '--frob'])).toBe(2);
    expect(err).toMatch(/^mkma: unpack: Unknown option '--frob'/);
  });

  test('a property of Object.prototype is not a command', async () => {
    expect(await main(['constructor'])).toBe(2);
    expect(await main(['help', 'toString'])).toBe(0);
    expect(out).toMatch(/^mkma — /);
  });
});
