// Applying one preset to the image (builder/stages/presets.ts runs them in order, from the
// cache where it can): presets run one after another, each completely before the
// next, so a later preset can rely on what an earlier one set up (a group, a repository, a
// configuration file its packages' maintainer scripts read). For one preset, in order:
//   1. packages   apt-get install in the chroot (apt-get update first when the sources changed)
//   2. files      its folder's tree copied into the image
//   3. users      created (or updated): groups, sudo, password
//   4. script     bash -e in the chroot; shared directories read-only at /shared_dirs/<name>
//   5. services   systemctl enable / disable / mask (the image's own systemctl)
//   6. hooks      on the host, with the image root as their only argument
// Steps 1-5 run in one chroot session (builder/chroot.ts). A failing step stops the build with
// the preset, the script line and the last output lines; on a terminal mkma offers to retry it,
// skip the preset, open a shell in the chroot, or abort.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { SHARED_DIRS_MOUNT, type Preset, type PresetUser } from '../config/preset.js';
import type { Stage } from '../lib/progress.js';
import { copyTreeInto, withChroot, type Chroot, type RunResult } from './chroot.js';
import { MkmaError } from '../lib/errors.js';
import { spawnTracked } from '../lib/run.js';

/** Printed by the ERR trap: bash knows the failing line, mkma reads it back. */
export const ERROR_MARK = 'mkma-preset-error line ';
/** Where the script is put inside the image (/run is a tmpfs during the session). */
const SCRIPT_PATH = '/run/mkma/preset.sh';
const TAIL_LINES = 10;

/**
 * The command that runs a preset's script: `bash -e`, with an ERR trap (inherited by functions
 * and subshells) that reports the failing line of the script file it sources.
 */
export function scriptCommand(scriptPath = SCRIPT_PATH): string[] {
  return ['/bin/bash', '-e', '-o', 'errtrace', '-c', `trap 'echo "${ERROR_MARK}$LINENO" >&2' ERR; . ${scriptPath}`];
}

export type StepName = 'packages' | 'files' | 'users' | 'script' | 'services' | 'hooks';

export interface StepFailure {
  step: StepName;
  /** what failed, e.g. "apt-get install" or "the script" */
  what: string;
  code: number | null;
  signal: string | null;
  /** line of the script (1-based) when bash told it */
  scriptLine: number | null;
  /** the last lines of output, without mkma's marker lines */
  tail: string[];
}

export class PresetError extends MkmaError {
  constructor(
    message: string,
    readonly preset: string,
    readonly failure: StepFailure | null,
  ) {
    super(message);
    this.name = 'PresetError';
  }
}

/** The first failing line bash reported (the innermost: subshells report before their parent). */
export function errorLine(output: string[]): number | null {
  for (const l of output) {
    const i = l.indexOf(ERROR_MARK);
    if (i >= 0) {
      const n = Number(l.slice(i + ERROR_MARK.length).trim());
      if (Number.isInteger(n) && n > 0) return n;
    }
  }
  return null;
}

/** The error text for a failed step: preset, step, script line (and its line in the TOML file), last output. */
export function describeFailure(p: Preset, f: StepFailure, logFile?: string): string {
  const status = f.signal ? `killed by ${f.signal}` : `exit status ${f.code}`;
  let head = `preset ${p.name}: ${f.what} failed (${status})`;
  if (f.step === 'script' && f.scriptLine !== null) {
    head = `preset ${p.name}: the script failed at line ${f.scriptLine} (${p.file}:${p.scriptLine + f.scriptLine - 1}), ${status}`;
  }
  const tail = f.tail.slice(-TAIL_LINES);
  const lines = [head];
  if (tail.length) lines.push('  last output:', ...tail.map((l) => `    ${l}`));
  else lines.push('  (no output)');
  if (logFile) lines.push(`  full log: ${logFile}`);
  return lines.join('\n');
}

/** What the build needs to know about apt between presets. */
export interface AptState {
  /** fingerprint of the sources when `apt-get update` last ran in this build, or null */
  updated: string | null;
}

/** Files that decide what apt-get update fetches: an earlier preset may add a repository. */
function sourcesFingerprint(root: string): string {
  const h = createHash('sha256');
  const add = (p: string) => {
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) for (const n of fs.readdirSync(p).sort()) add(path.join(p, n));
    else h.update(`${p}\0${st.size}\0${st.mtimeMs}\0`);
  };
  for (const d of [
    'etc/apt/sources.list',
    'etc/apt/sources.list.d',
    'etc/apt/trusted.gpg',
    'etc/apt/trusted.gpg.d',
    'etc/apt/keyrings',
    'etc/apt/preferences',
    'etc/apt/preferences.d',
    'etc/apt/auth.conf.d',
    'var/lib/dpkg/arch',
  ])
    add(path.join(root, d));
  return h.digest('hex');
}

export interface RunPresetOptions {
  root: string;
  preset: Preset;
  stage: Stage;
  /** ask what to do when a step fails (stdin and stdout are a terminal) */
  interactive: boolean;
  apt: AptState;
  /** host directory bind-mounted over /var/lib/apt/lists (apt's lists stay out of the tree) */
  aptLists?: string;
  /** the whole output of the preset goes here */
  logFile?: string;
  /** for tests: answers to the failure menu instead of the terminal */
  ask?: (question: string) => Promise<string>;
  /** what the chroot's commands need to run the image's programs: QEMU_CPU for a foreign image (builder/foreign.ts) */
  emulation?: Record<string, string>;
}

/** Applies one preset to the tree at `root`. Resolves 'skipped' when the user chose to skip it. */
export async function runPreset(o: RunPresetOptions): Promise<'ran' | 'skipped'> {
  const { preset: p, stage } = o;
  const log = o.logFile ? fs.openSync(o.logFile, 'w') : null;
  const onLine = (l: string) => {
    if (log !== null) fs.writeSync(log, l + '\n');
    if (!l.includes(ERROR_MARK) && l.trim()) stage.progress(l.length > 120 ? l.slice(0, 117) + '…' : l);
  };
  try {
    const outcome = await withChroot(
      o.root,
      async (c) => {
        if (o.aptLists) {
          fs.mkdirSync(path.join(o.aptLists, 'partial'), { recursive: true });
          c.bindWritable(o.aptLists, 'var/lib/apt/lists');
        }
        const steps: Array<[StepName, () => Promise<StepFailure | null>]> = [
          ['packages', () => installPackages(c, p, o.apt, onLine)],
          ['files', async () => copyFiles(c, p, onLine)],
          ['users', () => applyUsers(c, p, onLine)],
          ['script', () => runScript(c, p, onLine)],
          ['services', () => applyServices(c, p, onLine)],
        ];
        for (const [, step] of steps) {
          for (;;) {
            const failure = await step();
            if (!failure) break;
            const message = describeFailure(p, failure, o.logFile);
            if (!o.interactive) throw new PresetError(message, p.name, failure);
            const choice = await menu(message, c, p, o.ask);
            if (choice === 'retry') continue;
            if (choice === 'skip') return 'skipped' as const;
            throw new PresetError(`${message}\n  (aborted)`, p.name, failure);
          }
        }
        return 'ran' as const;
      },
      { env: { ...o.emulation, ...p.env } },
    );
    if (outcome === 'skipped') return outcome;
    for (const hook of p.hooks) await runHook(p, hook, o.root, onLine, o.logFile);
    return 'ran';
  } finally {
    if (log !== null) fs.closeSync(log);
  }
}

async function menu(message: string, c: Chroot, p: Preset, ask?: (q: string) => Promise<string>): Promise<'retry' | 'skip' | 'abort'> {
  const question = '[r]etry this step, [s]kip this preset, [o]pen a shell in the chroot, [a]bort? ';
  const prompt = ask ?? terminalQuestion;
  process.stderr.write(`\n${message}\n`);
  for (;;) {
    const a = (await prompt(question)).trim().toLowerCase();
    if (a === 'r' || a === 'retry') return 'retry';
    if (a === 's' || a === 'skip') return 'skip';
    if (a === 'a' || a === 'abort' || a === '\u0004') return 'abort';
    if (a === 'o' || a === 'shell' || a === 'open') {
      process.stderr.write(`a shell in the image (${c.root}); the preset's environment is set; exit to come back\n`);
      await c.shell(p.env);
    }
  }
}

function terminalQuestion(q: string): Promise<string> {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
    let answered = false;
    rl.on('close', () => {
      if (!answered) resolve('a'); // Ctrl-D: abort
    });
    rl.question(q, (a) => {
      answered = true;
      rl.close();
      resolve(a);
    });
  });
}

function failed(step: StepName, what: string, r: RunResult): StepFailure | null {
  if (r.code === 0) return null;
  return {
    step,
    what,
    code: r.code,
    signal: r.signal,
    scriptLine: step === 'script' ? errorLine(r.tail) : null,
    tail: r.tail.filter((l) => !l.includes(ERROR_MARK)),
  };
}

async function installPackages(c: Chroot, p: Preset, apt: AptState, onLine: (l: string) => void): Promise<StepFailure | null> {
  if (!p.packages.length) return null;
  const fp = sourcesFingerprint(c.root);
  if (apt.updated !== fp) {
    onLine(`$ apt-get update`);
    const u = await c.run(['apt-get', 'update'], { onLine });
    const f = failed('packages', 'apt-get update', u);
    if (f) return f;
    apt.updated = fp;
  }
  onLine(`$ apt-get install ${p.packages.join(' ')}`);
  const r = await c.run(
    ['apt-get', 'install', '-y', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', ...p.packages],
    { onLine },
  );
  const f = failed('packages', `apt-get install ${p.packages.join(' ')}`, r);
  if (f) return f;
  await c.run(['apt-get', 'clean'], { onLine });
  return null;
}

function copyFiles(c: Chroot, p: Preset, onLine: (l: string) => void): StepFailure | null {
  if (!p.files) return null;
  try {
    const n = copyTreeInto(p.files, c.root);
    onLine(`files: ${n} copied from ${p.files}`);
    return null;
  } catch (e) {
    return { step: 'files', what: 'copying files', code: 1, signal: null, scriptLine: null, tail: [(e as Error).message] };
  }
}

/** The commands that create or update one user (argv lists, no shell). */
export function userCommands(u: PresetUser, exists: boolean): string[][] {
  const cmds: string[][] = [];
  const groups = [...new Set([...u.groups, ...(u.sudo ? ['sudo'] : [])])];
  if (exists) {
    if (groups.length) cmds.push(['usermod', '-a', '-G', groups.join(','), u.name]);
  } else {
    cmds.push(['useradd', '--create-home', '--shell', '/bin/bash', ...(groups.length ? ['--groups', groups.join(',')] : []), u.name]);
  }
  const field = u.password.kind === 'locked' ? '!' : u.password.kind === 'empty' ? '' : u.password.hash;
  cmds.push(['usermod', '-p', field, u.name]);
  return cmds;
}

async function applyUsers(c: Chroot, p: Preset, onLine: (l: string) => void): Promise<StepFailure | null> {
  for (const u of p.users) {
    const exists = (await c.run(['id', '-u', u.name])).code === 0;
    for (const cmd of userCommands(u, exists)) {
      onLine(`$ ${cmd[0] === 'usermod' && cmd[1] === '-p' ? `usermod -p … ${u.name}` : cmd.join(' ')}`);
      const f = failed('users', `${cmd[0]} (user ${u.name})`, await c.run(cmd, { onLine }));
      if (f) return f;
    }
    // sudo with a locked password could never be used: such a user gets it without one
    const sudoers = path.join(c.root, 'etc/sudoers.d', `mkma-${u.name}`);
    if (u.sudo && u.password.kind === 'locked') {
      fs.mkdirSync(path.dirname(sudoers), { recursive: true });
      fs.writeFileSync(sudoers, `# mkma preset ${p.name}: ${u.name} has a locked password\n${u.name} ALL=(ALL:ALL) NOPASSWD: ALL\n`, {
        mode: 0o440,
      });
      fs.chmodSync(sudoers, 0o440);
    } else fs.rmSync(sudoers, { force: true });
  }
  return null;
}

async function runScript(c: Chroot, p: Preset, onLine: (l: string) => void): Promise<StepFailure | null> {
  if (p.script === null) return null;
  for (const name of p.sharedDirectories) c.bindReadOnly(path.join(p.dir, name), `${SHARED_DIRS_MOUNT.slice(1)}/${name}`);
  const script = path.join(c.root, SCRIPT_PATH);
  fs.mkdirSync(path.dirname(script), { recursive: true });
  fs.writeFileSync(script, p.script, { mode: 0o700 });
  return failed('script', 'the script', await c.run(scriptCommand(), { onLine }));
}

async function applyServices(c: Chroot, p: Preset, onLine: (l: string) => void): Promise<StepFailure | null> {
  for (const verb of ['enable', 'disable', 'mask'] as const) {
    const units = p.services[verb];
    if (!units.length) continue;
    onLine(`$ systemctl ${verb} ${units.join(' ')}`);
    const f = failed('services', `systemctl ${verb} ${units.join(' ')}`, await c.run(['systemctl', verb, ...units], { onLine }));
    if (f) return f;
  }
  return null;
}

function runHook(p: Preset, hook: string, root: string, onLine: (l: string) => void, logFile?: string): Promise<void> {
  onLine(`$ ${hook} ${root}`);
  return new Promise((resolve, reject) => {
    const tail: string[] = [];
    // not runSync/run: every line of output goes to the log and the progress line as it comes
    const child = spawnTracked(hook, [root], {
      cwd: p.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MKMA_PRESET: p.file },
    });
    const feed = (d: Buffer) => {
      for (const l of d.toString().split('\n')) {
        if (!l) continue;
        tail.push(l);
        if (tail.length > TAIL_LINES) tail.shift();
        onLine(l);
      }
    };
    child.stdout!.on('data', feed);
    child.stderr!.on('data', feed);
    child.on('error', (e) => reject(new PresetError(`preset ${p.name}: cannot run hook ${hook}: ${e.message}`, p.name, null)));
    child.on('close', (code, signal) => {
      if (code === 0) return resolve();
      const f: StepFailure = { step: 'hooks', what: `hook ${hook}`, code, signal, scriptLine: null, tail };
      reject(new PresetError(describeFailure(p, f, logFile), p.name, f));
    });
  });
}

/**
 * What a preset's run depends on: its file, the values of its environment variables, and the
 * contents of its shared directories, files folder and hooks. Equal hashes: the run can be
 * replayed from the cache.
 */
export function presetHash(p: Preset): string {
  const h = createHash('sha256');
  h.update('mkma-preset-1\0');
  h.update(fs.readFileSync(p.file));
  h.update('\0env\0');
  for (const name of p.environmentVariables) h.update(`${name}=${p.env[name] ?? ''}\0`);
  for (const name of p.sharedDirectories) hashTree(h, `shared:${name}`, path.join(p.dir, name));
  if (p.files) hashTree(h, 'files', p.files);
  for (const hook of p.hooks) hashTree(h, `hook:${hook}`, hook);
  return h.digest('hex');
}

/** Names, types, modes, symlink targets and contents of a tree (not owners: they are not copied). */
function hashTree(h: ReturnType<typeof createHash>, label: string, root: string): void {
  h.update(`\0${label}\0`);
  const walk = (abs: string, rel: string) => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(abs);
    } catch {
      h.update(`${rel}\0missing\0`);
      return;
    }
    h.update(`${rel}\0${st.mode.toString(8)}\0`);
    if (st.isSymbolicLink()) h.update(fs.readlinkSync(abs));
    else if (st.isFile()) h.update(fs.readFileSync(abs));
    else if (st.isDirectory()) {
      for (const n of fs.readdirSync(abs).sort()) walk(path.join(abs, n), rel ? `${rel}/${n}` : n);
    }
    h.update('\0');
  };
  walk(root, '');
}
