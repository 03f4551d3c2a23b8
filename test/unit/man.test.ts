// The man pages in man/ are generated (cli/man.ts, `npm run man`) and must be current: the
// option tables, the settings and the rules they come from change, and the pages follow.
import { beforeAll, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DescribedCommand } from '../../cli/args.js';
import { describedCommands } from '../../cli/commands.js';
import { manPages } from '../../cli/man.js';
import { SETTINGS } from '../../config/schema.js';
import { REPO } from '../helpers/paths.js';

const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string; man: string[]; files: string[] };
let commands: DescribedCommand[];
let pages: Record<string, string>;
beforeAll(async () => {
  commands = await describedCommands();
  pages = manPages(commands, pkg.version);
});

test('man/ holds exactly the generated pages, current (regenerate: npm run man)', () => {
  expect(fs.readdirSync(path.join(REPO, 'man')).sort()).toEqual(Object.keys(pages).sort());
  for (const [name, text] of Object.entries(pages)) expect(fs.readFileSync(path.join(REPO, 'man', name), 'utf8')).toBe(text);
});

test('package.json installs every page', () => {
  expect(pkg.man.map((m) => path.basename(m)).sort()).toEqual(Object.keys(pages).sort());
  expect(pkg.files).toContain('man');
});

test('mkma(1) has every command and every option; mkma.toml(5) every setting', () => {
  // plain text: no bold or underline by overstriking (-P-cbou)
  const render = (name: string) =>
    spawnSync('groff', ['-man', '-Tutf8', '-P-cbou', '-rLL=100n'], { input: pages[name], encoding: 'utf8' }).stdout;
  const mkma = render('mkma.1');
  for (const c of commands) {
    expect(mkma).toContain(`mkma ${c.name}\n`);
    for (const o of c.spec.options) expect(mkma).toContain(`--${o.long}`);
  }
  const toml = render('mkma.toml.5');
  for (const s of SETTINGS) expect(toml).toMatch(new RegExp(`^ {7}${s.key} \\(`, 'm'));
});

test.each(['mkma.1', 'mkma.toml.5', 'mkma-persist.rules.5'])('%s: groff finds nothing to warn about', (name) => {
  const r = spawnSync('groff', ['-man', '-ww', '-z', '-Tutf8'], { input: pages[name], encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
});
