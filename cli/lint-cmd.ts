// `mkma lint`: checks presets (and optionally mkma.toml) without building. Every finding is a
// line `FILE:LINE: message`; shellcheck's findings in a script are moved to the script's line
// in the TOML file. Exit 0 and "ok" when nothing is wrong, 1 otherwise.
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import { ConfigError, loadConfig } from '../config/load.js';
import { checkPresets, displayPath, type Preset } from '../config/preset.js';
import { EXIT, EnvironmentError, UsageError } from '../lib/errors.js';
import { COMMANDS } from './help.js';
import { parse } from './args.js';

export interface Finding {
  file: string;
  line: number | null;
  column?: number;
  message: string;
}

export function formatFinding(f: Finding): string {
  return `${f.file}${f.line !== null ? `:${f.line}${f.column ? `:${f.column}` : ''}` : ''}: ${f.message}`;
}

/**
 * shellcheck's gcc-format lines (`-:3:6: warning: … [SC2086]`) for a preset's script, with the
 * line moved to where that script line is in the TOML file.
 */
export function mapShellcheck(output: string, p: Pick<Preset, 'file' | 'scriptLine'>): Finding[] {
  const findings: Finding[] = [];
  for (const l of output.split('\n')) {
    const m = /^[^:]*:(\d+):(\d+): (.*)$/.exec(l);
    if (!m) continue;
    findings.push({ file: p.file, line: p.scriptLine + Number(m[1]) - 1, column: Number(m[2]), message: `script: ${m[3]}` });
  }
  return findings;
}

/** Runs shellcheck on a preset's script; null when shellcheck is missing. */
export function shellcheckPreset(p: Preset): Finding[] | null {
  if (p.script === null) return [];
  const r = spawnSync('shellcheck', ['-s', 'bash', '-f', 'gcc', '-'], { input: p.script, encoding: 'utf8' });
  if (r.error) return null;
  const findings = mapShellcheck(r.stdout, p);
  if (r.status !== 0 && !findings.length) {
    findings.push({ file: p.file, line: p.scriptLine, message: `shellcheck failed: ${(r.stderr || `exit status ${r.status}`).trim()}` });
  }
  return findings;
}

/** All findings for these presets (and configuration file). */
export function lint(presetArgs: string[], configFile: string | undefined, env: NodeJS.ProcessEnv): Finding[] {
  const findings: Finding[] = [];
  const fromError = (e: ConfigError): Finding => {
    const m = /^(.*?):(\d+)(?::(\d+))?: ([\s\S]*)$/.exec(e.message);
    if (e.file && m && m[1] === e.file) return { file: e.file, line: Number(m[2]), column: m[3] ? Number(m[3]) : undefined, message: m[4] };
    return { file: e.file ?? '', line: e.line, message: e.file ? e.message.replace(`${e.file}: `, '') : e.message };
  };
  if (configFile !== undefined) {
    try {
      loadConfig({ file: configFile, env, defaultHostname: os.hostname() || 'localhost' });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      findings.push(fromError(e));
    }
  }
  if (presetArgs.length) {
    let checked;
    try {
      checked = checkPresets(presetArgs, { env });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      findings.push(fromError(e));
      return findings;
    }
    findings.push(...checked.problems.map(fromError));
    for (const p of checked.presets) {
      const sc = shellcheckPreset(p);
      if (sc === null) throw new EnvironmentError('shellcheck is not installed (apt-get install shellcheck)');
      findings.push(...sc.map((f) => ({ ...f, file: displayPath(p.file) })));
    }
  }
  return findings;
}

export async function lintCmd(argv: string[]): Promise<number> {
  const { values } = parse('lint', argv, {
    preset: { type: 'string', short: 'p', multiple: true },
    config: { type: 'string', short: 'c' },
  });
  if (values.help) {
    process.stdout.write(COMMANDS.lint);
    return EXIT.ok;
  }
  const presets = values.preset ?? [];
  if (!presets.length && values.config === undefined) throw new UsageError('lint: nothing to check: give --preset PATH (repeatable) and/or --config FILE');
  const findings = lint(presets, values.config, process.env);
  if (!findings.length) {
    process.stdout.write('ok\n');
    return EXIT.ok;
  }
  process.stdout.write(findings.map(formatFinding).join('\n') + '\n');
  process.stderr.write(`mkma lint: ${findings.length} problem${findings.length === 1 ? '' : 's'}\n`);
  return EXIT.failed;
}
