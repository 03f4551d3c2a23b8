#!/usr/bin/env node
// Regenerates the configuration reference in README.md from config/schema.ts.
import fs from 'node:fs';
import { renderConfigReference } from '../dist/config/schema.js';
const file = new URL('../README.md', import.meta.url);
const text = fs.readFileSync(file, 'utf8');
const next = text.replace(
  /(<!-- config-reference:start -->\n)[\s\S]*?(<!-- config-reference:end -->)/,
  (_, a, b) => `${a}${renderConfigReference().trim()}\n${b}`,
);
fs.writeFileSync(file, next);
