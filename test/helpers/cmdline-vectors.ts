// The kernel command line vectors (test/fixtures/cmdline-vectors.json): how the kernel's
// next_arg splits each line. The TS splitter (unit) and the init's shell (integration) are both
// held to them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO } from './paths.js';

export interface CmdlineVector {
  title: string;
  cmdline: string;
  params: Array<[string, string | null]>;
}

export const CMDLINE_VECTORS = (
  JSON.parse(fs.readFileSync(path.join(REPO, 'test/fixtures/cmdline-vectors.json'), 'utf8')) as { vectors: CmdlineVector[] }
).vectors;
