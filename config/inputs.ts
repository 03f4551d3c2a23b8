// What `mkma build` and `mkma config` read before anything runs: the configuration file (found
// as findConfigFile says), the environment, the command line and the presets, every problem of
// all of them reported at once.
import {
  ConfigError,
  ConfigErrors,
  findConfigFile,
  loadResolvedConfig,
  throwProblems,
  type FoundConfig,
  type ResolvedConfig,
} from './load.js';
import { checkPresets, type Preset } from './preset.js';

export interface BuildInputs extends ResolvedConfig {
  found: FoundConfig;
  presets: Preset[];
}

export function loadBuildInputs(o: {
  /** --config FILE */
  given?: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** the HOSTNAME argument */
  hostname?: string;
  defaultHostname: string;
  presetArgs: string[];
  /** settings from the command line (--arch), by TOML key */
  overrides?: Record<string, string>;
}): BuildInputs {
  const found = findConfigFile({ given: o.given, cwd: o.cwd });
  const problems: ConfigError[] = [];
  let resolved: ResolvedConfig | null = null;
  try {
    resolved = loadResolvedConfig({
      file: found.file,
      env: o.env,
      hostname: o.hostname,
      defaultHostname: o.defaultHostname,
      overrides: o.overrides,
    });
  } catch (e) {
    if (e instanceof ConfigErrors) problems.push(...e.problems);
    else if (e instanceof ConfigError) problems.push(e);
    else throw e;
  }
  let presets: Preset[] = [];
  if (o.presetArgs.length) {
    try {
      const checked = checkPresets(o.presetArgs, { env: o.env });
      problems.push(...checked.problems);
      presets = checked.presets;
    } catch (e) {
      // a preset path that does not exist: nothing more to check there
      if (!(e instanceof ConfigError)) throw e;
      problems.push(e);
    }
  }
  throwProblems(problems);
  return { ...resolved!, found, presets };
}
