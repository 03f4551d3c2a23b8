#!/usr/bin/env node
// Regenerates man/*.{1,5} from the commands' specs, the settings table and the persist rules
// (cli/man.ts). test/unit/man.test.ts fails when they are not current.
import fs from 'node:fs';
import { describedCommands } from '../dist/cli/commands.js';
import { manPages } from '../dist/cli/man.js';
const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const dir = new URL('../man/', import.meta.url);
fs.mkdirSync(dir, { recursive: true });
for (const [name, text] of Object.entries(manPages(await describedCommands(), pkg.version))) fs.writeFileSync(new URL(name, dir), text);
