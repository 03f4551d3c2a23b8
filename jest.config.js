// ESM + TypeScript: ts-jest transpiles only, file by file (isolatedModules in
// tsconfig.test.json; no type-check here: the test scripts run tsc first),
// and ink is ESM-only, hence NODE_OPTIONS=--experimental-vm-modules in package.json.
// Not @swc/jest / jest 30: their platform-specific optional packages (@swc/core-*,
// @unrs/resolver-binding-*) are not all on the registry this project installs from, and then
// `npm ci` refuses the lock file. ts-jest and jest 29 are plain JavaScript.
const transform = {
  '^.+\\.tsx?$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.test.json', diagnostics: false }],
};
const common = {
  extensionsToTreatAsEsm: ['.ts', '.tsx'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform,
  testEnvironment: 'node',
  // never crawl build output, test work trees (whole root filesystems) or dependencies
  roots: [
    '<rootDir>/test',
    '<rootDir>/lib',
    '<rootDir>/format',
    '<rootDir>/config',
    '<rootDir>/builder',
    '<rootDir>/init',
    '<rootDir>/persist',
    '<rootDir>/qemu',
    '<rootDir>/install',
    '<rootDir>/cli',
  ],
};
export default {
  // Jest's default of 5 s per test is a timing assertion in disguise: the root integration
  // tests run mke2fs, debugfs, mount and the like, and on a loaded 2-core CI machine one took
  // longer (qemu.test.ts, 'a rebuild keeps the layers'). Tests that boot or build still set their
  // own, longer timeouts.
  testTimeout: 60_000,
  // arm64.test.ts runs last: its image builds in the background meanwhile
  testSequencer: '<rootDir>/test/e2e/sequencer.mjs',
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts?(x)'] },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts?(x)'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/e2e/**/*.test.ts?(x)'],
      // The desktop preset's boot installs Xorg and a display manager into an image of its own
      // and boots it to the greeter (minutes under TCG): `npm run test:desktop`, not `npm test`.
      testPathIgnorePatterns: process.env.MKMA_DESKTOP_BOOT ? [] : ['/test/e2e/desktop-boot\\.test\\.ts$'],
      globalSetup: '<rootDir>/test/e2e/global-setup.ts',
    },
  ],
};
