// `mkma persist` in a real terminal, the way a person uses it: tmux runs it at 80x24, keys are
// typed with send-keys, the screen is read with capture-pane, and the written layer is checked.
import { afterAll, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { extractImage, readManifest } from '../../format/reader.js';
import { MKMA } from '../helpers/paths.js';
import { startTmux, type TmuxSession } from '../helpers/tmux.js';

const SESSION = `mkma-persist-${process.pid}`;

describe('mkma persist terminal UI in tmux (80x24)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-tmux-'));
  let t: TmuxSession | undefined;
  afterAll(() => {
    t?.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('open, move, exclude a subtree, confirm, and the layer holds exactly the rest', async () => {
    const upper = path.join(dir, 'upper');
    const lower = path.join(dir, 'lower');
    const images = path.join(dir, 'images');
    for (const d of [`${lower}/etc`, `${upper}/etc`, `${upper}/srv/app`, `${upper}/srv/junk`, images]) fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(`${lower}/etc/hostname`, 'old\n');
    fs.writeFileSync(`${upper}/etc/hostname`, 'new\n');
    for (const f of ['a', 'b', 'c']) fs.writeFileSync(`${upper}/srv/app/${f}`, f);
    fs.writeFileSync(`${upper}/srv/junk/big`, Buffer.alloc(300_000, 7));

    // env -u CI: ink renders only the last frame when it believes it runs in CI
    const cmd = `env -u CI ${process.execPath} ${MKMA} persist --upper ${upper} --lower ${lower} --path ${images}; echo "EXIT=$?"; sleep 60`;
    t = startTmux(SESSION, cmd);
    const { screen, waitFor, keys } = t;
    const first = await waitFor(/save 8 \(/);
    expect(first).toMatch(/^\/.*upper: 8 changes · save 8 \(293 KiB of 293 KiB\)/m);
    expect(first).toMatch(/M hostname/);
    expect(first).toMatch(/↑↓←→ move\/fold {2}space toggle/);
    for (const line of first.split('\n')) expect([...line].length).toBeLessThanOrEqual(80);

    // down to srv/junk/ and exclude it with everything below
    await keys('Down', 'Down', 'Down', 'Down');
    expect(screen()).toMatch(/^> +▸ \[x\] A junk\//m);
    await keys('Space');
    const excluded = await waitFor(/save 6 \(7 B of 293 KiB\)/);
    expect(excluded).toMatch(/^> +▸ \[ \] A junk\//m);
    expect(excluded).toMatch(/\[~\] A srv\//);

    await keys('Enter');
    const confirm = await waitFor(/Save now\?/);
    expect(confirm).toMatch(/changes +6 saved/);
    expect(confirm).toMatch(/entries +7 incl\. parent directories/);
    expect(confirm).toMatch(/left out +2 changes, 293 KiB/);
    await keys('y');
    const saved = await waitFor(/Press any key to exit/);
    // the path is cut in the middle to the width; its end, the layer's state, is there
    expect(saved).toMatch(/layer +\S+@trial-3-0\.cpio\.zst/);
    expect(saved).toMatch(/on trial: it is kept once a boot with it/);
    await keys('x');
    await waitFor(/EXIT=0/);

    const names = fs.readdirSync(images);
    expect(names).toEqual([expect.stringMatching(/^persistence\.\d{8}T\d{6}Z@trial-3-0\.cpio\.zst$/)]);
    const file = path.join(images, names[0]);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const m = readManifest(file);
    expect(m.kind).toBe('layer');
    const tree = path.join(dir, 'tree');
    fs.mkdirSync(tree);
    await extractImage(file, tree);
    expect(fs.readFileSync(`${tree}/etc/hostname`, 'utf8')).toBe('new\n');
    expect(fs.readdirSync(`${tree}/srv/app`).sort()).toEqual(['a', 'b', 'c']);
    expect(fs.existsSync(`${tree}/srv/junk`)).toBe(false);
  }, 90_000);
});
