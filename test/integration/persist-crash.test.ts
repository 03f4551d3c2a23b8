// A persist killed at any moment (SIGKILL: no cleanup of its own) must never leave a file named
// persistence.*.cpio.zst that is not complete — the boot would try to apply it — and the next
// persist must succeed, removing the dead run's temporary file and lock.
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packTree } from '../../format/pack.js';
import { extractImage, readManifest } from '../../format/reader.js';
import { savedRecordPath } from '../../persist/saved.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-persist-crash-'));
const IMAGES = path.join(WORK, 'images');
const U = path.join(WORK, 'upper');
const FILES = 30;
const LEVEL = '9';

afterAll(() => {
  fs.rmSync(savedRecordPath(U), { force: true });
  fs.rmSync(WORK, { recursive: true, force: true });
});

/** The CLI as users run it: `node bin/mkma.js persist …` */
function cliArgv(args: string[]): string[] {
  return [path.join(REPO, 'bin/mkma.js'), 'persist', ...args];
}
const ARGS = ['--yes', '--upper', U, '--path', IMAGES, '--level', LEVEL];

const isLayer = (n: string) => /^persistence\..*\.cpio\.zst$/.test(n);
const layers = () => fs.readdirSync(IMAGES).filter(isLayer).sort();
const leftovers = () =>
  fs
    .readdirSync(IMAGES)
    .filter((n) => n.startsWith('.'))
    .sort();

/** A layer present under its final name must be whole: manifest, data, every file of the upper. */
async function assertComplete(name: string): Promise<void> {
  const file = path.join(IMAGES, name);
  const m = readManifest(file);
  expect(m.kind).toBe('layer');
  expect(m.entries).toBe(FILES + 1); // srv/ and its files
  const dest = fs.mkdtempSync(path.join(WORK, 'check-'));
  await extractImage(file, dest);
  const names = fs.readdirSync(path.join(dest, 'srv')).sort();
  expect(names).toEqual(fs.readdirSync(path.join(U, 'srv')).sort());
  for (const n of names) {
    expect(fs.readFileSync(path.join(dest, 'srv', n)).equals(fs.readFileSync(path.join(U, 'srv', n)))).toBe(true);
  }
  fs.rmSync(dest, { recursive: true });
}

function runToEnd(): { status: number | null; stderr: string; ms: number } {
  // a first save of the upperdir each time (a killed run may have recorded its layer as saved
  // in this boot: persist/saved.ts)
  fs.rmSync(savedRecordPath(U), { force: true });
  const t = performance.now();
  const r = spawnSync(process.execPath, cliArgv(ARGS), { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stderr: r.stderr, ms: performance.now() - t };
}

beforeAll(async () => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  const src = path.join(WORK, 'src');
  fs.mkdirSync(path.join(src, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(src, 'etc/hostname'), 'crash\n');
  fs.mkdirSync(IMAGES);
  await packTree(src, path.join(IMAGES, 'base.cpio.zst'), { kind: 'base', level: 3 });
  // ~30 MB, compressible about 1:1.3 (base64 of random bytes): a write that takes a while
  fs.mkdirSync(path.join(U, 'srv'), { recursive: true });
  for (let i = 0; i < FILES; i++) {
    fs.writeFileSync(path.join(U, 'srv', `f${String(i).padStart(2, '0')}`), crypto.randomBytes(768 << 10).toString('base64'));
  }
}, 120_000);

test('SIGKILL at ten moments: no incomplete layer under its final name, and the next persist recovers', async () => {
  // an uninterrupted run, to know how long a persist takes
  const first = runToEnd();
  expect(first.status).toBe(0);
  expect(layers()).toHaveLength(1);
  await assertComplete(layers()[0]);
  expect(leftovers()).toEqual([]);
  for (const l of layers()) fs.rmSync(path.join(IMAGES, l));

  const full = first.ms;
  const delays = Array.from({ length: 10 }, (_, i) => Math.round(20 + (i * (full * 0.97 - 20)) / 9));
  const seen: string[] = [];
  for (const delay of delays) {
    const child = spawn(process.execPath, cliArgv(ARGS), { stdio: 'ignore' });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await new Promise((r) => setTimeout(r, delay));
    const before = leftovers();
    child.kill('SIGKILL');
    const code = await exited; // reaped: its pid is dead now, not a zombie
    // what the killed run left: a complete layer or none under a final name
    const after = layers();
    for (const l of after) await assertComplete(l);
    const when =
      code === 0
        ? 'finished before the kill'
        : before.some((n) => n.includes('.tmp-'))
          ? 'killed while writing'
          : before.length
            ? 'killed holding the lock'
            : 'killed before writing';
    seen.push(`${delay} ms: ${when}, left ${JSON.stringify(leftovers())} + ${after.length} layer(s)`);
    expect(after.length).toBeLessThanOrEqual(1);

    // the next persist cleans up and writes a whole layer
    const next = runToEnd();
    expect(next.status).toBe(0);
    expect(leftovers()).toEqual([]);
    const now = layers();
    expect(now).toHaveLength(after.length + 1);
    for (const l of now) await assertComplete(l);
    for (const l of now) fs.rmSync(path.join(IMAGES, l));
  }
  process.stderr.write(`full persist: ${full.toFixed(0)} ms\n${seen.join('\n')}\n`);
  // the kills must have hit the write itself, not only start-up
  expect(seen.filter((s) => s.includes('killed while writing')).length).toBeGreaterThanOrEqual(3);
}, 600_000);
