// The README's configuration reference is generated from the one settings table.
import { expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { renderConfigReference } from '../../config/schema.js';
import { REPO } from '../helpers/paths.js';

test('README configuration reference matches config/schema.ts (regenerate: npm run readme)', () => {
  const readme = fs.readFileSync(`${REPO}/README.md`, 'utf8');
  const m = readme.match(/<!-- config-reference:start -->\n([\s\S]*?)<!-- config-reference:end -->/);
  expect(m).not.toBeNull();
  expect(m![1].trim()).toBe(renderConfigReference().trim());
});
