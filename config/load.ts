// Turns defaults + mkma.toml + environment + command line into the one typed Config, checking
// every value against config/schema.ts. Errors name the file, line and key, and say what the
// value should be, so the user can fix mkma.toml without reading the code.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { parse, TomlError, type TomlValue } from 'smol-toml';
import { SCHEMA, SETTINGS, hostnameProblem, type Setting, type SettingType } from './schema.js';
import type { Config } from './types.js';
import { UsageError } from '../lib/errors.js';
import { didYouMean } from '../lib/suggest.js';

// (config/preset.ts imports the suggester from here)
export { closest } from '../lib/suggest.js';

export class ConfigError extends UsageError {
  readonly file: string | null;
  readonly key: string | null;
  readonly line: number | null;

  constructor(problem: string, where: { file: string | null; key: string | null; line: number | null; column?: number }) {
    const pos = where.line === null ? '' : `${where.line}${where.column ? `:${where.column}` : ''}`;
    const prefix = where.file ? `${where.file}${pos ? `:${pos}` : ''}: ` : pos ? `line ${pos}: ` : '';
    super(prefix + problem);
    this.name = 'ConfigError';
    this.file = where.file;
    this.key = where.key;
    this.line = where.line;
  }
}

interface ParseOptions {
  file: string | null;
  env: NodeJS.ProcessEnv;
  /** explicit hostname (the CLI's HOSTNAME argument): beats file and environment */
  hostname?: string;
  /** used when neither the file nor the command line names a hostname */
  defaultHostname: string;
  /** settings given on the command line (`mkma build --arch arm64`), by TOML key: beat file and environment */
  overrides?: Record<string, string>;
}

/** Several problems at once (a mkma.toml, presets): one UsageError that lists them all. */
export class ConfigErrors extends UsageError {
  constructor(readonly problems: ConfigError[]) {
    super(`${problems.length} problems in the configuration:\n${problems.map((p) => `  ${p.message}`).join('\n')}`);
    this.name = 'ConfigErrors';
  }
}

/** Throws what `problems` holds: nothing, the one ConfigError, or all of them as ConfigErrors. */
export function throwProblems(problems: ConfigError[]): void {
  if (problems.length === 1) throw problems[0];
  if (problems.length > 1) throw new ConfigErrors(problems);
}

/** Where a value of the effective configuration came from (`mkma config`). */
export type Origin =
  | { from: 'default' }
  | { from: 'file'; file: string; line: number | null }
  | { from: 'environment'; variable: string }
  | { from: 'command line' }
  | { from: 'build host' };

export interface ResolvedConfig {
  config: Config;
  /** by TOML key */
  origins: Record<string, Origin>;
}

const BY_KEY = new Map(SETTINGS.map((s) => [s.key, s]));

/** The TOML document of `file` (mkma.toml or a preset); a syntax error is a ConfigError with its line. */
export function parseTomlDocument(text: string, file: string | null): Record<string, TomlValue> {
  try {
    return parse(text);
  } catch (e) {
    if (!(e instanceof TomlError)) throw e;
    // smol-toml's message is "Invalid TOML document: <reason>" followed by a code excerpt.
    const reason = e.message.split('\n')[0].replace(/^Invalid TOML document: /, '');
    throw new ConfigError(`invalid TOML: ${reason}`, { file, key: null, line: e.line, column: e.column });
  }
}

/** Pure: parses mkma.toml's text (no I/O). Precedence: defaults < file < env < `hostname`. */
export function parseConfigText(text: string, opts: ParseOptions): Config {
  return resolveConfig(text, opts).config;
}

/**
 * The effective configuration and where each value came from. Every problem of the file, the
 * environment and the command line is found before any is reported (ConfigErrors).
 */
export function resolveConfig(text: string, opts: ParseOptions): ResolvedConfig {
  const { file } = opts;
  const doc = parseTomlDocument(text, file);
  const problems: ConfigError[] = [];

  const raw = new Map<string, TomlValue | null>(SETTINGS.map((s) => [s.key, s.default]));
  const origins: Record<string, Origin> = Object.fromEntries(SETTINGS.map((s) => [s.key, { from: 'default' }]));

  for (const [key, value] of Object.entries(doc)) {
    const line = lineOf(text, key);
    const s = BY_KEY.get(key);
    if (!s) {
      problems.push(new ConfigError(`key "${key}" is unknown${didYouMean(key, [...BY_KEY.keys()])}`, { file, key, line }));
      continue;
    }
    const problem = valueProblem(s, value);
    if (problem) {
      problems.push(new ConfigError(keyed(key, problem), { file, key, line }));
      continue;
    }
    raw.set(key, value);
    origins[key] = { from: 'file', file: file ?? '', line };
  }

  for (const s of SETTINGS) {
    const text = s.env ? opts.env[s.env] : undefined;
    // An empty variable counts as unset (`MKMA_COMPRESSION_LEVEL= mkma build`).
    if (text === undefined || text === '') continue;
    const value = fromEnv(s.type, text);
    const problem = value === undefined ? `must be ${expected(s.type)}, got ${JSON.stringify(text)}` : valueProblem(s, value);
    if (problem) {
      problems.push(new ConfigError(keyed(s.env!, problem), { file: null, key: s.key, line: null }));
      continue;
    }
    raw.set(s.key, value!);
    origins[s.key] = { from: 'environment', variable: s.env! };
  }

  for (const [key, value] of Object.entries(opts.overrides ?? {})) {
    const problem = valueProblem(BY_KEY.get(key)!, value);
    if (problem) problems.push(new ConfigError(`${keyed(key, problem)} (given on the command line)`, { file: null, key, line: null }));
    else {
      raw.set(key, value);
      origins[key] = { from: 'command line' };
    }
  }
  // the kernel package follows the architecture unless one was chosen
  if (origins[SCHEMA.kernelPackage.key].from === 'default')
    raw.set(SCHEMA.kernelPackage.key, defaultKernelPackage(String(raw.get(SCHEMA.architecture.key))));

  if (opts.hostname !== undefined) {
    const problem = hostnameProblem(opts.hostname);
    if (problem)
      problems.push(new ConfigError(`hostname: ${problem} (given on the command line)`, { file: null, key: 'hostname', line: null }));
    else {
      raw.set('hostname', opts.hostname);
      origins.hostname = { from: 'command line' };
    }
  }
  if (raw.get('hostname') === null && !problems.some((p) => p.key === 'hostname')) {
    const problem = hostnameProblem(opts.defaultHostname);
    if (problem)
      problems.push(
        new ConfigError(`hostname: the build host's name ${problem}; set hostname in mkma.toml or give one on the command line`, {
          file: null,
          key: 'hostname',
          line: null,
        }),
      );
    raw.set('hostname', opts.defaultHostname);
    origins.hostname = { from: 'build host' };
  }
  // in the order a reader of mkma.toml meets them; the environment and command line after it
  problems.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity));
  throwProblems(problems);

  // Every field is set from its schema entry (the schema is keyed by Config field, so none is
  // missing) and every value was validated above: the cast only restates that.
  const config: Record<string, unknown> = { source: file };
  for (const s of SETTINGS) {
    const v = raw.get(s.key)!;
    config[s.field] = s.toConfig ? s.toConfig(v) : v;
  }
  return { config: config as unknown as Config, origins };
}

/** Debian's generic kernel of an architecture (its metapackage: linux-image-amd64, -arm64, -riscv64). */
export function defaultKernelPackage(arch: string): string {
  return (
    ({ i386: 'linux-image-686-pae', armhf: 'linux-image-armmp-lpae', armel: 'linux-image-marvell' } as Record<string, string>)[arch] ??
    `linux-image-${arch}`
  );
}

/** Reads and parses a config file; without `file`, defaults + env + arguments only. */
export function loadConfig(opts: Omit<ParseOptions, 'file'> & { file?: string | null }): Config {
  return loadResolvedConfig(opts).config;
}

/** loadConfig with the origin of every value (`mkma config`). */
export function loadResolvedConfig(opts: Omit<ParseOptions, 'file'> & { file?: string | null }): ResolvedConfig {
  const file = opts.file ?? null;
  let text = '';
  if (file !== null) {
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EISDIR' ? 'is a directory' : err.message;
      throw new ConfigError(`cannot read the configuration file: ${why}`, { file, key: null, line: null });
    }
  }
  return resolveConfig(text, { ...opts, file });
}

/** The configuration file a command reads when none is given: in the current directory, then the system's. */
export const CONFIG_NAME = 'mkma.toml';
export const SYSTEM_CONFIG = '/etc/mkma/mkma.toml';

export interface FoundConfig {
  /** null: no file, the defaults (and environment) only */
  file: string | null;
  /** how it was chosen, for "configuration: FILE (HOW)" */
  how: string;
}

/**
 * Which mkma.toml a command uses: `--config FILE` when given; else ./mkma.toml when it exists;
 * else /etc/mkma/mkma.toml when it exists; else none (defaults). Like git or mkosi, the
 * nearest file wins, and the command says which it used.
 */
export function findConfigFile(o: { given?: string; cwd: string; system?: string; exists?: (p: string) => boolean }): FoundConfig {
  if (o.given !== undefined) return { file: o.given, how: 'given with --config' };
  const exists = o.exists ?? ((p: string) => existsSync(p) && statSync(p).isFile());
  const local = path.join(o.cwd, CONFIG_NAME);
  // named as a person would type it: ./mkma.toml when it is in the process's own directory
  if (exists(local))
    return { file: path.resolve(local) === path.resolve(CONFIG_NAME) ? `./${CONFIG_NAME}` : local, how: 'found in the current directory' };
  const system = o.system ?? SYSTEM_CONFIG;
  if (exists(system)) return { file: system, how: 'the system configuration' };
  return { file: null, how: `no ${CONFIG_NAME} here or in ${path.dirname(system)}: defaults` };
}

/**
 * Identifies the bootstrapped tree a configuration produces: the builder stores it next to the
 * chroot and reuses the chroot only when the hash is unchanged. It covers every setting except
 * those the schema marks `affectsTree: false` (compression level, RAM size: packing and boot
 * only; hostname, root password: applied by the configure stage, which runs again when they
 * change) and `source`; `extra` adds anything else the tree depends on (mkma version, hook
 * contents). Object key order does not matter; list order does (a needless rebuild is the
 * safe mistake).
 */
export function configHash(c: Config, extra: string[] = []): string {
  const tree: Record<string, unknown> = {};
  for (const s of SETTINGS) if (s.affectsTree !== false) tree[s.field] = c[s.field];
  return createHash('sha256').update(canonicalJson({ tree, extra })).digest('hex');
}

/** What mkma.json says for a root password given as a crypt hash: the hash is not written out. */
export const HASH_NOT_RECORDED = 'a crypt hash (not recorded)';

/**
 * Plain object with the TOML keys, for mkma.json. The root password's crypt hash is left out
 * (an offline guess needs only the hash): "locked", "empty", or that it was a hash.
 */
export function describeConfig(c: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) out[s.key] = s.toToml ? s.toToml(c[s.field]) : c[s.field];
  if (c.rootPassword.kind === 'hash') out[SCHEMA.rootPassword.key] = HASH_NOT_RECORDED;
  out.source = c.source;
  return out;
}

/** What is wrong with a TOML value for this setting (to follow the key), or null. */
export function valueProblem(s: Setting, v: TomlValue): string | null {
  const t = s.type;
  const wrong = `must be ${expected(t)}, got ${describe(v)}`;
  const each = (check: ((x: string) => string | null) | undefined, xs: string[]) => {
    for (const x of xs) {
      const p = check?.(x);
      if (p) return p;
    }
    return null;
  };
  switch (t.kind) {
    case 'string':
      return typeof v === 'string' ? each(t.check, [v]) : wrong;
    case 'string[]':
      return isStringList(v) ? each(t.check, v) : wrong;
    case 'integer':
      if (typeof v !== 'number' || !Number.isInteger(v)) return wrong;
      return v < t.min || v > t.max ? `must be ${expected(t)}, got ${v}` : null;
    case 'boolean':
      return typeof v === 'boolean' ? null : wrong;
    case 'enum':
      if (typeof v !== 'string') return wrong;
      return t.values.includes(v) ? null : `must be ${expected(t)}, got ${JSON.stringify(v)}`;
    case 'all-or-list':
      if (v === 'all') return null;
      return isStringList(v) ? each(t.check, v) : wrong;
  }
}

function expected(t: SettingType): string {
  switch (t.kind) {
    case 'string':
      return 'a string';
    case 'string[]':
      return 'a list of strings';
    case 'integer':
      return `an integer from ${t.min} to ${t.max}`;
    case 'boolean':
      return 'true or false';
    case 'enum':
      return `one of ${t.values.join(', ')}`;
    case 'all-or-list':
      return '"all" or a list of strings';
  }
}

/** TOML type of a value, as users know the names. */
export function describe(v: TomlValue): string {
  if (Array.isArray(v)) {
    const odd = v.find((x) => typeof x !== 'string');
    return odd === undefined ? 'list of strings' : `list containing ${describe(odd)}`;
  }
  if (typeof v === 'string') return 'string';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'float';
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'bigint') return 'integer';
  if (v instanceof Date) return 'datetime';
  return 'table';
}

function isStringList(v: TomlValue): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

function keyed(name: string, problem: string): string {
  return problem.startsWith('must ') ? `${name} ${problem}` : `${name}: ${problem}`;
}

/** Environment text → TOML value of the setting's type; undefined when it cannot be one. */
function fromEnv(t: SettingType, text: string): TomlValue | undefined {
  const s = text.trim();
  switch (t.kind) {
    case 'integer':
      return /^[+-]?[0-9]+$/.test(s) ? Number(s) : undefined;
    case 'boolean':
      return /^(1|true|yes)$/i.test(s) ? true : /^(0|false|no)$/i.test(s) ? false : undefined;
    case 'string[]':
      return s.split(/[\s,]+/).filter(Boolean);
    case 'all-or-list':
      return s === 'all' ? s : s.split(/[\s,]+/).filter(Boolean);
    default:
      return s;
  }
}

/**
 * Line of `key` in the source. smol-toml reports no positions for values, so this scans for
 * the key at the start of a line (`key =`, `key.sub =`, `[key]`); null when not found.
 */
function lineOf(text: string, key: string): number | null {
  const k = `["']?${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}["']?`;
  const re = new RegExp(`^\\s*(?:${k}\\s*[.=]|\\[+\\s*${k}\\s*[\\].])`);
  const i = text.split(/\r?\n/).findIndex((l) => re.test(l));
  return i < 0 ? null : i + 1;
}

/** JSON with object keys sorted at every level, so equal values give equal text. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}
