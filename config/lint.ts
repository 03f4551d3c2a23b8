// `mkma lint`'s checks: presets (and optionally mkma.toml) without building. Every finding has
// a file and, where known, a line; shellcheck's findings in a script are moved to the script's
// line in the TOML file.
import * as os from 'node:os';
import { EnvironmentError } from '../lib/errors.js';
import { CommandNotFoundError, runSync } from '../lib/run.js';
import { ConfigError, ConfigErrors, loadConfig } from './load.js';
import { checkPresets, displayPath, type Preset } from './preset.js';

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

/** Runs shellcheck on a preset's script (an EnvironmentError when shellcheck is missing). */
export function shellcheckPreset(p: Preset): Finding[] {
  if (p.script === null) return [];
  let r;
  try {
    r = runSync('shellcheck', ['-s', 'bash', '-f', 'gcc', '-'], { input: p.script, allowFailure: true });
  } catch (e) {
    if (e instanceof CommandNotFoundError) throw new EnvironmentError('shellcheck is not installed (apt-get install shellcheck)');
    throw e;
  }
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
      if (e instanceof ConfigErrors) findings.push(...e.problems.map(fromError));
      else if (e instanceof ConfigError) findings.push(fromError(e));
      else throw e;
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
      findings.push(...shellcheckPreset(p).map((f) => ({ ...f, file: displayPath(p.file) })));
    }
  }
  return findings;
}
