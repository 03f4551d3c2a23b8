// ESM + TypeScript: @swc/jest transpiles (no type-check: `npm test` runs tsc first),
// and ink is ESM-only, hence NODE_OPTIONS=--experimental-vm-modules in package.json.
const transform = {
  '^.+\\.(t|j)sx?$': ['@swc/jest', {
    jsc: { parser: { syntax: 'typescript', tsx: true }, target: 'es2022', transform: { react: { runtime: 'automatic' } } },
    module: { type: 'es6' },
  }],
};
const common = {
  extensionsToTreatAsEsm: ['.ts', '.tsx'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform,
  testEnvironment: 'node',
  // never crawl build output, test work trees (whole root filesystems) or dependencies
  roots: ['<rootDir>/test', '<rootDir>/format', '<rootDir>/config', '<rootDir>/builder', '<rootDir>/init',
    '<rootDir>/persist', '<rootDir>/qemu', '<rootDir>/cli'],
};
export default {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts?(x)'] },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts?(x)'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/e2e/**/*.test.ts?(x)'],
      globalSetup: '<rootDir>/test/e2e/global-setup.ts',
    },
  ],
};
