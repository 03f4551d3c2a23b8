// `mkma layers compact --into-base` beside a base image (base_format = erofs / squashfs): the
// init boots base.erofs / base.squashfs, which --into-base cannot rewrite, so it is refused
// (exit 2) and nothing changes; compaction without --into-base works there (the e2e test
// test/e2e/base-image.test.ts boots its result).
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomStack } from '../conformance/random.js';
import { MKMA, WORK } from '../helpers/paths.js';

const listing = (dir: string) => Object.fromEntries(fs.readdirSync(dir).map((n) => [n, fs.statSync(path.join(dir, n)).mtimeMs]));

describe('layers compact --into-base beside base.erofs / base.squashfs', () => {
  for (const image of ['base.erofs', 'base.squashfs']) {
    test(`${image}: refused, nothing changed`, async () => {
      const dir = path.join(WORK, `compact-${image}`);
      fs.rmSync(dir, { recursive: true, force: true });
      const images = await randomStack(7, dir, 2);
      fs.writeFileSync(path.join(images, image), 'an image');
      const before = listing(images);
      const r = spawnSync('node', [MKMA, 'layers', 'compact', '--into-base', '--path', images], { encoding: 'utf8' });
      expect(r.stderr).toMatch(new RegExp(`these images boot from ${image.replace('.', '\\.')} .*Compact without --into-base`));
      expect(r.status).toBe(2);
      expect(listing(images)).toEqual(before);
    }, 120_000);
  }
});
