// `mkma completion bash|zsh`: the scripts are loaded into the real shells and asked what they
// complete, as a user's TAB would; every command offers exactly the options its spec has.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { allOptions } from '../../cli/args.js';
import { describedCommands } from '../../cli/commands.js';
import { bashCompletion, zshCompletion } from '../../cli/completion.js';
import { REPO } from '../helpers/paths.js';
import type { DescribedCommand } from '../../cli/args.js';

let commands: DescribedCommand[];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-completion-'));
// a directory to complete file and directory names in
const files = path.join(dir, 'files');

beforeAll(async () => {
  commands = await describedCommands();
  const topics = commands.map((c) => c.name);
  fs.writeFileSync(path.join(dir, 'mkma.bash'), bashCompletion(commands, topics));
  fs.mkdirSync(path.join(dir, 'zsh'));
  fs.writeFileSync(path.join(dir, 'zsh', '_mkma'), zshCompletion(commands, topics));
  fs.mkdirSync(path.join(files, 'presets'), { recursive: true });
  fs.writeFileSync(path.join(files, 'prod.toml'), '');
});

/** What bash completes for `line` (the last word is the one being completed). */
function bash(line: string): string[] {
  const words = line.split(' ');
  const script = `source ${dir}/mkma.bash
COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; COMPREPLY=()
_mkma
printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = spawnSync('bash', ['--norc', '-c', script], { cwd: files, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  return r.stdout.split('\n').filter(Boolean).sort();
}

/** What zsh completes for `line` (typed, then TAB), through a pseudo-terminal. */
function zsh(line: string): string[] {
  const r = spawnSync('zsh', ['-f', path.join(REPO, 'test/helpers/zsh-capture.zsh'), path.join(dir, 'zsh'), line], {
    cwd: files,
    encoding: 'utf8',
    timeout: 20_000,
  });
  expect(r.status).toBe(0);
  // _files offers a name once per tag it tries (globbed files, directories, all files)
  return [...new Set(r.stdout.replace(/\r/g, '').split('\n').filter(Boolean))].sort();
}

const longs = (name: string) => allOptions(commands.find((c) => c.name === name)!.spec).map((o) => `--${o.long}`);

describe.each([
  ['bash', bash],
  ['zsh', zsh],
])('%s', (_shell, complete) => {
  test('commands, and a prefix of one', () => {
    expect(complete('mkma ')).toEqual(expect.arrayContaining(commands.map((c) => c.name)));
    expect(complete('mkma per')).toEqual(['persist']);
    expect(complete('mkma help bu')).toEqual(['build']);
  });

  test.each(['build', 'qemu', 'unpack', 'persist', 'lint', 'config', 'completion'])(
    '%s: every option of its spec, and only those',
    (name) => {
      expect(complete(`mkma ${name} --`)).toEqual(longs(name).sort());
    },
  );

  test('option values: fixed words, directories, files', () => {
    expect(complete('mkma unpack --extractor ')).toEqual(['auto', 'native', 'ts']);
    expect(complete('mkma completion ')).toEqual(['bash', 'zsh']);
    // a directory option offers directories only, not prod.toml (zsh: below, in a terminal)
    if (complete === bash) expect(complete('mkma build --out pr')).toEqual(['presets']);
    expect(complete('mkma build --config pr')).toEqual(['presets', 'prod.toml']);
    expect(complete('mkma build --ins')).toEqual(['--install-deps']);
  });
});

// The capture above sees every match zsh computes, also those of file tags it then does not
// offer; what zsh really offers is seen in a terminal: the one match is put on the line.
test('zsh in a terminal: a directory option completes to the one directory, not the file', async () => {
  const session = `mkma-zsh-${process.pid}`;
  const tmux = (...args: string[]) => spawnSync('tmux', args, { encoding: 'utf8' });
  const screen = () => tmux('capture-pane', '-p', '-t', session).stdout;
  const until = async (re: RegExp) => {
    for (let i = 0; i < 100 && !re.test(screen()); i++) await new Promise((r) => setTimeout(r, 100));
    return screen();
  };
  tmux('new-session', '-d', '-s', session, '-x', '100', '-y', '10', '-c', files, 'zsh -f');
  try {
    tmux(
      'send-keys',
      '-t',
      session,
      `PS1='$ '; fpath=(${dir}/zsh $fpath); autoload -U compinit; compinit -u -d ${dir}/zcompdump; echo READY`,
      'Enter',
    );
    await until(/^READY/m);
    tmux('send-keys', '-t', session, 'mkma build --out pr', 'Tab');
    expect(await until(/presets\/$/m)).toMatch(/^\$ mkma build --out presets\/$/m);
  } finally {
    tmux('kill-session', '-t', session);
  }
});

test('the bash script passes shellcheck', () => {
  const r = spawnSync('shellcheck', ['-s', 'bash', path.join(dir, 'mkma.bash')], { encoding: 'utf8' });
  expect(r.stdout + r.stderr).toBe('');
  expect(r.status).toBe(0);
});
