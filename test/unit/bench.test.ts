// The benchmark's own parsing of mkma's output: a format change must break a test, not only
// the next `npm run bench`.
import { expect, test } from '@jest/globals';
import { initModules } from '../../bench/fig3-boot.js';
import { generateInit } from '../../init/generate.js';

test('figure 3 finds the module lists in the init mkma generates', () => {
  const init = generateInit({
    modules: { storage: ['virtio_pci', 'virtio_blk'], filesystems: { ext4: ['crc16', 'ext4'] }, overlay: ['overlay'] },
    defaultRamSize: '50%',
    deviceTimeoutSec: 30,
    version: 't',
  });
  expect(initModules(init)).toEqual({ storage: ['virtio_pci', 'virtio_blk'], ext4: ['crc16', 'ext4'], overlay: ['overlay'] });
});
