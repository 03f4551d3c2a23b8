// Presets: small TOML files that add packages, files, users, services, a chroot script and
// host hooks to an image. `mkma build --preset PATH` applies them one after another (a
// directory means every *.toml in it, in C-locale order of file name); `mkma lint` checks them.
// Errors are ConfigErrors with file, line and key, in the words config/load.ts uses.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TomlValue } from 'smol-toml';
import { closest, ConfigError, describe as describeValue, parseTomlDocument, valueProblem } from './load.js';
import { DEBIAN_PACKAGE_RE, type Setting } from './schema.js';
import { KeyLines, scriptStartLine } from './preset-lines.js';
import type { RootPasswordPolicy } from './types.js';

export interface PresetUser {
  name: string;
  /** supplementary groups (they must exist when the preset runs: an earlier preset may create them) */
  groups: string[];
  /** member of "sudo" (the sudo package is installed); a locked password gets NOPASSWD */
  sudo: boolean;
  password: RootPasswordPolicy;
}

export interface PresetServices {
  enable: string[];
  disable: string[];
  mask: string[];
}

export interface Preset {
  /** absolute path of the TOML file */
  file: string;
  /** how output and errors name it: the file name (with its folder when two presets share one) */
  name: string;
  /** the folder holding the preset: shared directories, files and hooks are relative to it */
  dir: string;
  packages: string[];
  script: string | null;
  /** line of the TOML file holding the script's first line */
  scriptLine: number;
  /** folder names next to the preset, bind-mounted read-only at /shared_dirs/<name> */
  sharedDirectories: string[];
  environmentVariables: string[];
  /** the values of environmentVariables, from mkma's environment */
  env: Record<string, string>;
  /** absolute path of the folder whose tree is copied into the image, or null */
  files: string | null;
  users: PresetUser[];
  services: PresetServices;
  /** absolute paths of executables run on the host with the image root as argument */
  hooks: string[];
}

/** Where the chroot script sees a shared directory. */
export const SHARED_DIRS_MOUNT = '/shared_dirs';

const KEYS = ['packages', 'script', 'shared_directories', 'environment_variables', 'files', 'users', 'services', 'hooks'] as const;
const USER_KEYS = ['name', 'groups', 'sudo', 'password'] as const;
const SERVICE_KEYS = ['enable', 'disable', 'mask'] as const;

const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
// useradd's default NAME_REGEX (Debian) without the trailing "$" for machine accounts.
const USER_NAME_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const GROUP_NAME_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const UNIT_NAME_RE = /^[A-Za-z0-9:_.@\\-]+$/;
const CRYPT_HASH_RE = /^\$[^\s:]+$/;
const FOLDER_NAME_RE = /^[A-Za-z0-9._-]+$/;

const setting = (key: string, type: Setting['type']): Setting => ({ key, type, default: null, help: '' });

const packageCheck = (s: string) =>
  DEBIAN_PACKAGE_RE.test(s)
    ? null
    : `${JSON.stringify(s)} is not a valid Debian package name (lowercase letters, digits, ` +
      `"+", "-", "."; at least 2 characters, starting with a letter or digit)`;
const envNameCheck = (s: string) =>
  ENV_NAME_RE.test(s)
    ? null
    : `${JSON.stringify(s)} is not a valid environment variable name (letters, digits and "_", not starting with a digit)`;
const folderCheck = (s: string) =>
  FOLDER_NAME_RE.test(s) && s !== '.' && s !== '..'
    ? null
    : `${JSON.stringify(s)} must be the name of a folder next to the preset (letters, digits, ".", "_", "-"; no "/")`;
const relPathCheck = (s: string) => (s.trim() === '' ? 'must not be empty' : null);
const unitCheck = (s: string) => (UNIT_NAME_RE.test(s) ? null : `${JSON.stringify(s)} is not a valid systemd unit name`);

const SETTINGS: Record<string, Setting> = {
  packages: setting('packages', { kind: 'string[]', check: packageCheck }),
  script: setting('script', { kind: 'string' }),
  shared_directories: setting('shared_directories', { kind: 'string[]', check: folderCheck }),
  environment_variables: setting('environment_variables', { kind: 'string[]', check: envNameCheck }),
  files: setting('files', { kind: 'string', check: relPathCheck }),
  hooks: setting('hooks', { kind: 'string[]', check: relPathCheck }),
};

export interface ParsedPreset {
  /** null when the text could not be parsed at all */
  preset: Preset | null;
  /** every problem found, in file order as far as possible */
  problems: ConfigError[];
}

export interface PresetCheckOptions {
  env: NodeJS.ProcessEnv;
  /** check folders and hooks on disk (the default); off for pure parsing */
  checkFiles?: boolean;
}

/**
 * Parses and checks one preset's text. Collects every problem instead of stopping at the
 * first, so `mkma lint` can list them all; `loadPresets` throws the first.
 */
export function parsePresetText(text: string, file: string, opts: PresetCheckOptions): ParsedPreset {
  const problems: ConfigError[] = [];
  const lines = new KeyLines(text);
  const err = (problem: string, key: string | null, line: number | null, column?: number) =>
    problems.push(new ConfigError(problem, { file, key, line, column }));

  let doc: Record<string, TomlValue>;
  try {
    doc = parseTomlDocument(text, file);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(e);
    return { preset: null, problems };
  }

  const abs = path.resolve(file);
  const dir = path.dirname(abs);
  const preset: Preset = {
    file: abs,
    name: path.basename(abs),
    dir,
    packages: [],
    script: null,
    scriptLine: 1,
    sharedDirectories: [],
    environmentVariables: [],
    env: {},
    files: null,
    users: [],
    services: { enable: [], disable: [], mask: [] },
    hooks: [],
  };

  let usersRaw: TomlValue | undefined;
  let servicesRaw: TomlValue | undefined;
  for (const [key, value] of Object.entries(doc)) {
    const line = lines.top(key);
    if (!(KEYS as readonly string[]).includes(key)) {
      err(unknownKey(key, KEYS), key, line);
      continue;
    }
    if (key === 'users') {
      usersRaw = value;
      continue;
    }
    if (key === 'services') {
      servicesRaw = value;
      continue;
    }
    const problem = valueProblem(SETTINGS[key], value);
    if (problem) {
      err(keyed(key, problem), key, line);
      continue;
    }
    switch (key) {
      case 'packages':
        preset.packages = value as string[];
        break;
      case 'script':
        preset.script = value as string;
        preset.scriptLine = scriptStartLine(text, line);
        break;
      case 'shared_directories':
        preset.sharedDirectories = value as string[];
        break;
      case 'environment_variables':
        preset.environmentVariables = value as string[];
        break;
      case 'files':
        preset.files = path.resolve(dir, value as string);
        break;
      case 'hooks':
        preset.hooks = (value as string[]).map((h) => path.resolve(dir, h));
        break;
    }
  }

  // environment variables: every declared one must be set (an empty value counts as unset)
  const envLine = lines.top('environment_variables');
  for (const name of preset.environmentVariables) {
    const v = opts.env[name];
    if (v === undefined || v === '') {
      err(
        `environment variable ${name} is not set (this preset needs it: export it; with sudo, ` +
          `keep it with sudo --preserve-env=${name})`,
        'environment_variables',
        envLine,
      );
    } else preset.env[name] = v;
  }

  if (usersRaw !== undefined) preset.users = parseUsers(usersRaw, preset, lines, err);
  if (servicesRaw !== undefined) preset.services = parseServices(servicesRaw, lines, err);
  // sudo = true needs the sudo package
  if (preset.users.some((u) => u.sudo) && !preset.packages.includes('sudo')) preset.packages = [...preset.packages, 'sudo'];

  if (opts.checkFiles !== false) {
    for (const name of preset.sharedDirectories) {
      const p = path.join(dir, name);
      if (!isDir(p))
        err(
          `shared_directories: ${JSON.stringify(name)} is not a directory next to the preset (${p})`,
          'shared_directories',
          lines.top('shared_directories'),
        );
    }
    if (preset.files !== null && !isDir(preset.files)) {
      err(`files: ${JSON.stringify(doc.files)} is not a directory (${preset.files})`, 'files', lines.top('files'));
    }
    (doc.hooks as string[] | undefined)?.forEach((h, i) => {
      const p = preset.hooks[i];
      if (!p) return;
      let st: fs.Stats;
      try {
        st = fs.statSync(p);
      } catch {
        err(`hooks: ${JSON.stringify(h)} does not exist (${p})`, 'hooks', lines.top('hooks'));
        return;
      }
      if (!st.isFile()) err(`hooks: ${JSON.stringify(h)} is not a file (${p})`, 'hooks', lines.top('hooks'));
      else if ((st.mode & 0o111) === 0) err(`hooks: ${JSON.stringify(h)} is not executable (chmod +x ${p})`, 'hooks', lines.top('hooks'));
    });
  }
  problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
  return { preset, problems };
}

type Err = (problem: string, key: string | null, line: number | null) => void;

function parseUsers(raw: TomlValue, preset: Preset, lines: KeyLines, err: Err): PresetUser[] {
  const line = lines.top('users');
  if (!Array.isArray(raw) || raw.some((u) => !isTable(u))) {
    err(`users must be an array of tables ([[users]] with name, groups, sudo, password), got ${describe(raw)}`, 'users', line);
    return [];
  }
  const users: PresetUser[] = [];
  raw.forEach((u, i) => {
    const t = u as Record<string, TomlValue>;
    const where = `users[${i + 1}]`;
    const uline = lines.arrayTable('users', i) ?? line;
    const at = (k: string) => lines.after(uline, k) ?? uline;
    let ok = true;
    const bad = (problem: string, k: string | null) => {
      ok = false;
      err(problem, 'users', k ? at(k) : uline);
    };
    for (const k of Object.keys(t)) if (!(USER_KEYS as readonly string[]).includes(k)) bad(`${where}: ${unknownKey(k, USER_KEYS)}`, k);
    const str = (k: string): string | null => {
      const v = t[k];
      if (v === undefined) return null;
      if (typeof v !== 'string') {
        bad(`${where}.${k} must be a string, got ${describe(v)}`, k);
        return null;
      }
      const expanded = expandVars(v, preset, (name) => bad(`${where}.${k} uses \${${name}}, which is not in environment_variables`, k));
      return expanded;
    };
    const name = str('name');
    if (t.name === undefined) bad(`${where}.name is required`, null);
    else if (name !== null && name !== UNSET && !USER_NAME_RE.test(name)) {
      bad(
        `${where}.name: ${JSON.stringify(name)} is not a valid user name (lowercase letters, digits, "_" and "-", starting with a letter or "_", at most 32)`,
        'name',
      );
    }
    let groups: string[] = [];
    if (t.groups !== undefined) {
      if (!Array.isArray(t.groups) || t.groups.some((g) => typeof g !== 'string'))
        bad(`${where}.groups must be a list of strings, got ${describe(t.groups)}`, 'groups');
      else {
        groups = t.groups as string[];
        for (const g of groups)
          if (!GROUP_NAME_RE.test(g)) bad(`${where}.groups: ${JSON.stringify(g)} is not a valid group name`, 'groups');
      }
    }
    let sudo = false;
    if (t.sudo !== undefined) {
      if (typeof t.sudo !== 'boolean') bad(`${where}.sudo must be true or false, got ${describe(t.sudo)}`, 'sudo');
      else sudo = t.sudo;
    }
    let password: RootPasswordPolicy = { kind: 'locked' };
    const pw = str('password');
    if (pw !== null && pw !== UNSET) {
      if (pw === 'locked' || pw === 'empty') password = { kind: pw };
      else if (CRYPT_HASH_RE.test(pw)) password = { kind: 'hash', hash: pw };
      // the value is not echoed: it may be a clear-text password typed by mistake
      else
        bad(
          `${where}.password must be "locked", "empty" or a crypt hash starting with "$" (make one with \`mkpasswd -m yescrypt\`; a clear-text password is not accepted)`,
          'password',
        );
    }
    if (ok && name !== null && name !== UNSET) users.push({ name, groups, sudo, password });
  });
  return users;
}

function parseServices(raw: TomlValue, lines: KeyLines, err: Err): PresetServices {
  const line = lines.top('services');
  const out: PresetServices = { enable: [], disable: [], mask: [] };
  if (!isTable(raw)) {
    err(`services must be a table (enable = [...], disable = [...], mask = [...]), got ${describe(raw)}`, 'services', line);
    return out;
  }
  for (const [k, v] of Object.entries(raw as Record<string, TomlValue>)) {
    const at = lines.after(line, k) ?? line;
    if (!(SERVICE_KEYS as readonly string[]).includes(k)) {
      err(`services: ${unknownKey(k, SERVICE_KEYS)}`, 'services', at);
      continue;
    }
    const problem = valueProblem(setting(`services.${k}`, { kind: 'string[]', check: unitCheck }), v);
    if (problem) err(keyed(`services.${k}`, problem), 'services', at);
    else out[k as keyof PresetServices] = v as string[];
  }
  return out;
}

/** Marks a value that could not be expanded (a variable is missing): not validated further. */
const UNSET = '\0unset';

/** ${NAME} → its value; NAME must be one of the preset's environment_variables. */
function expandVars(s: string, preset: Preset, undeclared: (name: string) => void): string {
  let missing = false;
  const out = s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
    if (!preset.environmentVariables.includes(name)) {
      undeclared(name);
      missing = true;
      return '';
    }
    const v = preset.env[name];
    if (v === undefined) missing = true; // reported as "not set" already
    return v ?? '';
  });
  return missing ? UNSET : out;
}

/** The presets shipped with mkma (presets/ in a checkout and in the npm package). */
export function shippedPresetsDir(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // config/ in the sources (tests), dist/config installed
  for (const c of [path.join(here, '..', 'presets'), path.join(here, '..', '..', 'presets')]) if (isDir(c)) return c;
  return null;
}

export function shippedPresets(): string[] {
  const dir = shippedPresetsDir();
  return dir
    ? fs
        .readdirSync(dir)
        .filter((n) => isDir(path.join(dir, n)))
        .sort()
    : [];
}

/**
 * A PATH argument as a path: a bare name that is no file here but one of the shipped presets
 * (`--preset console`) stands for that preset's directory, wherever mkma is installed.
 */
function resolvePresetArg(arg: string): string {
  if (fs.existsSync(arg) || arg.includes('/') || !shippedPresets().includes(arg)) return arg;
  return path.join(shippedPresetsDir()!, arg);
}

/** The files a PATH argument stands for: itself, or a directory's *.toml in C-locale order. */
export function expandPresetPaths(args: string[]): string[] {
  const files: string[] = [];
  for (const given of args) {
    const arg = resolvePresetArg(given);
    let st: fs.Stats;
    try {
      st = fs.statSync(arg);
    } catch {
      const shipped = shippedPresets();
      throw new ConfigError(
        `cannot read the preset: no such file or directory${shipped.length ? ` (mkma's own presets: ${shipped.join(', ')})` : ''}`,
        { file: arg, key: null, line: null },
      );
    }
    if (st.isDirectory()) {
      const names = fs
        .readdirSync(arg)
        .filter((n) => n.endsWith('.toml') && fs.statSync(path.join(arg, n)).isFile())
        .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      if (!names.length) throw new ConfigError('no *.toml presets in this directory', { file: arg, key: null, line: null });
      files.push(...names.map((n) => path.resolve(arg, n)));
    } else files.push(path.resolve(arg));
  }
  return files;
}

export interface LintedPresets {
  presets: Preset[];
  problems: ConfigError[];
}

/** Every preset the arguments name, parsed and checked, with all their problems. */
export function checkPresets(args: string[], opts: PresetCheckOptions): LintedPresets {
  const presets: Preset[] = [];
  const problems: ConfigError[] = [];
  for (const file of expandPresetPaths(args)) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      problems.push(new ConfigError(`cannot read the preset: ${(e as Error).message}`, { file, key: null, line: null }));
      continue;
    }
    const r = parsePresetText(text, displayPath(file), opts);
    problems.push(...r.problems);
    if (r.preset) presets.push({ ...r.preset, file });
  }
  nameUniquely(presets);
  return { presets, problems };
}

/** For `mkma build`: the presets in order, or the first problem as a ConfigError. */
export function loadPresets(args: string[], env: NodeJS.ProcessEnv): Preset[] {
  const { presets, problems } = checkPresets(args, { env });
  if (problems.length) throw problems[0];
  return presets;
}

/** Paths in messages: relative to the working directory when inside it. */
export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

function nameUniquely(presets: Preset[]): void {
  const count = new Map<string, number>();
  for (const p of presets) count.set(p.name, (count.get(p.name) ?? 0) + 1);
  for (const p of presets) if (count.get(p.name)! > 1) p.name = `${path.basename(p.dir)}/${path.basename(p.file)}`;
}

/** The key nearest to `key` by edit distance when near enough to be a typo, as load.ts does. */
function unknownKey(key: string, known: readonly string[]): string {
  const near = closest(key, known);
  return `key "${key}" is unknown${near ? ` (did you mean "${near}"?)` : ''}`;
}

function keyed(name: string, problem: string): string {
  return problem.startsWith('must ') ? `${name} ${problem}` : `${name}: ${problem}`;
}

function isTable(v: TomlValue): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date);
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** config/load.ts's describe, plus the one TOML shape only presets take: arrays of tables. */
function describe(v: TomlValue): string {
  return Array.isArray(v) && v.length && v.every(isTable) ? 'array of tables' : describeValue(v);
}
