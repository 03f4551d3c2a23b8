// The build's inputs as `mkma build` and `mkma config` take them from their command line: the
// configuration file (given, or found), the hostname argument, the presets, this environment.
import * as os from 'node:os';
import { loadBuildInputs, type BuildInputs } from '../config/inputs.js';

export function buildInputsFromArgs(
  values: { config?: string; preset?: string[]; arch?: string },
  hostname: string | undefined,
): BuildInputs {
  return loadBuildInputs({
    given: values.config,
    cwd: process.cwd(),
    env: process.env,
    hostname,
    defaultHostname: os.hostname(),
    presetArgs: values.preset ?? [],
    overrides: values.arch !== undefined ? { architecture: values.arch } : undefined,
  });
}
