// The kernel command line as Linux splits it (lib/cmdline.ts), against the vectors the init's
// shell parser is held to as well (test/integration/init-cmdline.test.ts), and what
// `mkma persist` takes from it.
import { describe, expect, test } from '@jest/globals';
import { formatKernelParam, kernelParam, parseKernelParams } from '../../lib/cmdline.js';
import { kernelCommandLine } from '../../builder/bootentries.js';
import { parseCmdline, storageProblem } from '../../persist/storage.js';
import { CMDLINE_VECTORS } from '../helpers/cmdline-vectors.js';

const VECTORS = CMDLINE_VECTORS;

describe("parseKernelParams: the kernel's next_arg", () => {
  test.each(VECTORS.map((v) => [v.title, v] as const))('%s', (_title, v) => {
    const got = parseKernelParams(Buffer.from(v.cmdline, 'latin1'), 'latin1').map((p) => [p.key, p.value]);
    expect(got).toEqual(v.params);
  });

  test('UTF-8 text: values come back as text', () => {
    expect(parseKernelParams('"mkma_images_path=/Bilder/Ferien é"')).toEqual([{ key: 'mkma_images_path', value: '/Bilder/Ferien é' }]);
  });

  test('kernelParam: the last one given', () => {
    const params = parseKernelParams('a=1 b a=2 b=x');
    expect(kernelParam(params, 'a')).toBe('2');
    expect(kernelParam(params, 'b')).toBe('x');
    expect(kernelParam(params, 'c')).toBeUndefined();
    expect(kernelParam(parseKernelParams('b=1 b'), 'b')).toBeNull();
  });
});

describe('formatKernelParam', () => {
  test('quotes a value with whitespace; the kernel parses it back', () => {
    for (const value of ['/mkma', '/my images', 'LABEL=my disk', 'tab\there', '', 'nbsp\u00a0é']) {
      const text = formatKernelParam('mkma_images_path', value);
      expect(parseKernelParams(`quiet ${text} ro`)).toEqual([
        { key: 'quiet', value: null },
        { key: 'mkma_images_path', value },
        { key: 'ro', value: null },
      ]);
    }
    expect(formatKernelParam('k', '/my images')).toBe('k="/my images"');
    expect(formatKernelParam('k', '/mkma')).toBe('k=/mkma');
  });

  test('a value the kernel cannot carry is an error, not a wrong command line', () => {
    expect(() => formatKernelParam('k', 'a "b')).toThrow('k=a "b: a value with a double quote cannot be put on a kernel command line');
    // unquoted, its quote would make the kernel read ` ro` into the value
    expect(parseKernelParams('k=a"b ro')).toEqual([{ key: 'k', value: 'a"b ro' }]);
    expect(() => formatKernelParam('k', 'a"b')).toThrow(RangeError);
  });
});

describe('mkma persist: where the images are', () => {
  test('parseCmdline reads the storage keys as the init does', () => {
    expect(parseCmdline('quiet "mkma_images_path=/my images" mkma_storage_device=LABEL=MKMA')).toEqual({
      device: 'LABEL=MKMA',
      imagesPath: '/my images',
    });
    expect(parseCmdline('mkma_images_path="/a b" mkma_images_path=/c')).toEqual({ imagesPath: '/c' });
    expect(parseCmdline('mkma-storage-device=/dev/vda1 mkma_images_path -- mkma_images_path=/x')).toEqual({ device: '/dev/vda1' });
    expect(parseCmdline(Buffer.from('mkma_images_path=/a\xa0mkma_storage_device=/dev/sda', 'latin1'))).toEqual({
      device: '/dev/sda',
      imagesPath: '/a',
    });
    // /proc/cmdline's closing newline is not part of the command line (the init drops it too)
    expect(parseCmdline('mkma_images_path="/no end\n')).toEqual({ imagesPath: '/no end' });
  });

  test('mkma build prints a path with spaces quoted', () => {
    expect(kernelCommandLine({ device: 'UUID=1234', imagesPath: '/srv/my images' })).toBe(
      'mkma_storage_device=UUID=1234 mkma_images_path="/srv/my images"',
    );
    expect(parseCmdline(kernelCommandLine({ device: 'UUID=1234', imagesPath: '/srv/my images' }))).toEqual({
      device: 'UUID=1234',
      imagesPath: '/srv/my images',
    });
  });

  test('storageProblem refuses what the init refuses', () => {
    expect(storageProblem({ device: 'LABEL=MKMA', imagesPath: '/my images' })).toBeNull();
    expect(storageProblem({ imagesPath: '/mkma/../../etc' })).toBe('mkma_images_path=/mkma/../../etc leaves the device (it holds ..)');
    expect(storageProblem({ imagesPath: '/a\nb' })).toBe('mkma_images_path= holds control characters');
    expect(storageProblem({ device: 'LABEL=x\ndevice=/dev/evil' })).toBe('mkma_storage_device= holds control characters');
  });
});
