// `mkma chroot --path DIR` without --yes, in a real terminal (tmux, test/helpers/tmux.ts): a
// shell in the images' tree; what is typed there is offered by persist's UI when the shell
// exits; Enter and y save it as a layer, q discards it. Root (mounts), busybox as the tree's
// shell (test/helpers/images.ts shellTree).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { unpackImages } from '../../format/apply.js';
import { packTree } from '../../format/pack.js';
import { extractImage, readManifest } from '../../format/reader.js';
import { shellTree } from '../helpers/images.js';
import { MKMA, REPO } from '../helpers/paths.js';
import { startTmux, type TmuxSession } from '../helpers/tmux.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-chroot-tmux-'));
/** the sessions' work areas: empty again after each session */
const WORKBASE = path.join(WORK, 'tmp');
const IMAGES = path.join(WORK, 'images');
const layersIn = () =>
  fs
    .readdirSync(IMAGES)
    .filter((n) => n.startsWith('persistence.'))
    .sort();
let t: TmuxSession | undefined;

beforeAll(async () => {
  // dist/ for bin/mkma.js
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  fs.mkdirSync(WORKBASE);
  const src = path.join(WORK, 'src');
  shellTree(src);
  fs.mkdirSync(IMAGES);
  await packTree(src, path.join(IMAGES, 'base.cpio.zst'), { kind: 'base', level: 3 });
}, 120_000);

/** Mount points under WORK (/proc/self/mountinfo). */
const mountsLeft = () =>
  fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && m.startsWith(WORK + '/'));

afterAll(async () => {
  // a session still open (a check failed): its terminal gone, mkma chroot cleans up (SIGHUP)
  t?.kill();
  for (let i = 0; i < 100 && mountsLeft().length; i++) await new Promise((r) => setTimeout(r, 100));
  for (const m of mountsLeft().reverse()) spawnSync('umount', ['-l', m]);
  fs.rmSync(WORK, { recursive: true, force: true });
}, 30_000);

/** `mkma chroot --path IMAGES` in tmux at 80x24, up to its shell's prompt. */
async function openChroot(name: string): Promise<TmuxSession> {
  t?.kill();
  // env -u CI: ink renders only the last frame when it believes it runs in CI
  const cmd = `env -u CI TMPDIR=${WORKBASE} ${process.execPath} ${MKMA} chroot --path ${IMAGES}; echo "EXIT=$?"; sleep 60`;
  t = startTmux(`mkma-chroot-${name}-${process.pid}`, cmd);
  const s = await t.waitFor(/^\(mkma chroot\) #/m, 60_000);
  expect(s).toContain('mkma chroot: exit the shell to save or discard the changes');
  return t;
}

describe('mkma chroot, interactive (tmux, 80x24)', () => {
  test('a command typed in the shell is offered when it exits; Enter, y: saved as a layer', async () => {
    const { waitFor, keys } = await openChroot('save');
    await keys('touch /root/hello; exit', 'Enter');
    const list = await waitFor(/save 1 \(/);
    expect(list).toMatch(/upper: 1 change · save 1 \(0 B of 0 B\)/);
    expect(list).toMatch(/\[x\] +root\/\n +\[x\] A hello /);
    await keys('Enter');
    const confirm = await waitFor(/Save now\?/);
    expect(confirm).toMatch(/changes +1 saved/);
    await keys('y');
    const saved = await waitFor(/Press any key to exit/);
    expect(saved).toMatch(/layer +\S+@trial-3-0\.cpio\.zst/);
    await keys('x');
    await waitFor(/^EXIT=0$/m);

    const [layer] = layersIn();
    expect(layersIn()).toEqual([expect.stringMatching(/^persistence\.\d{8}T\d{6}Z@trial-3-0\.cpio\.zst$/)]);
    expect(readManifest(path.join(IMAGES, layer)).message).toBe('mkma chroot: shell');
    const x = path.join(WORK, 'saved');
    fs.mkdirSync(x);
    await extractImage(path.join(IMAGES, layer), x);
    expect(fs.readdirSync(path.join(x, 'root'))).toEqual(['hello']);
    expect(fs.readdirSync(WORKBASE)).toEqual([]);
  }, 120_000);

  test('q in the list discards what the shell changed: no layer', async () => {
    const before = layersIn();
    expect(before).toHaveLength(1);
    const { waitFor, keys } = await openChroot('discard');
    // the tree is base + the layer saved above: /root/hello is there
    await keys('test -e /root/hello && touch /root/again; exit', 'Enter');
    const list = await waitFor(/save 1 \(/);
    expect(list).toMatch(/\[x\] A again /);
    await keys('q');
    const done = await waitFor(/^EXIT=0$/m);
    expect(done).toContain('mkma: nothing saved (the changes were discarded)');
    expect(layersIn()).toEqual(before);
    const tree = path.join(WORK, 'after-discard');
    await unpackImages(IMAGES, tree);
    expect(fs.readdirSync(path.join(tree, 'root'))).toEqual(['hello']);
    expect(fs.readdirSync(WORKBASE)).toEqual([]);
  }, 120_000);
});
