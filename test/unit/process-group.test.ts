// lib/cleanup.ts killProcessGroup: a command and everything it started stop together, SIGTERM
// first (a script's trap runs), SIGKILL for what ignores it.
import { describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { killProcessGroup } from '../../lib/cleanup.js';

/** The live (not zombie) members of a process group. */
const members = (pgid: number) =>
  spawnSync('ps', ['-e', '-o', 'pid=,pgid=,stat='], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([pid, group, stat]) => pid && Number(group) === pgid && !stat.startsWith('Z'));

describe('killProcessGroup', () => {
  test('stops the leader and its children; a trap on TERM runs, an ignored TERM gets KILL', async () => {
    const mark = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-pg-')), 'trapped');
    const script = `trap 'echo yes > ${mark}; exit 0' TERM; sh -c 'trap "" TERM; sleep 600' & sleep 600 & wait`;
    const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300));
    expect(members(child.pid!).length).toBeGreaterThanOrEqual(3);
    expect(killProcessGroup(child.pid!, 500)).toBe(true);
    expect(members(child.pid!)).toEqual([]);
    expect(fs.readFileSync(mark, 'utf8')).toBe('yes\n');
  });

  test('a process that leads no group: nothing is sent', () => {
    expect(killProcessGroup(2 ** 22 + 12345)).toBe(false);
  });
});
