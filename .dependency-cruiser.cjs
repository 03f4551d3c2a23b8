// The layering of mkma's folders, checked by `npm run lint:deps` (dependency-cruiser). The
// same matrix, with the reasons, is in ARCHITECTURE.md ("Layers"); change both together.
//
//   lib       imports nothing of mkma's (the ground floor)
//   format    lib
//   config    lib
//   init      lib, format
//   persist   lib, format
//   qemu      lib, format
//   install   lib, format, persist
//   builder   lib, format, config, init
//   cli       anything above (and only cli/ and bin/ import cli/)
//   bench     anything but cli/ and test/
//   test      anything (it tests every layer)
const FOLDERS = ['lib', 'format', 'config', 'init', 'persist', 'qemu', 'install', 'builder', 'cli', 'bench', 'test'];
const ALLOWED = {
  lib: [],
  format: ['lib'],
  config: ['lib'],
  init: ['lib', 'format'],
  persist: ['lib', 'format'],
  qemu: ['lib', 'format'],
  install: ['lib', 'format', 'persist'],
  builder: ['lib', 'format', 'config', 'init'],
  cli: ['lib', 'format', 'config', 'init', 'persist', 'qemu', 'install', 'builder'],
  bench: ['lib', 'format', 'config', 'init', 'persist', 'qemu', 'install', 'builder'],
};

const layerRules = Object.entries(ALLOWED).map(([from, allowed]) => {
  const forbidden = FOLDERS.filter((f) => f !== from && !allowed.includes(f));
  return {
    name: `layer-${from}`,
    comment: `${from}/ may import only ${allowed.length ? allowed.map((f) => `${f}/`).join(', ') : "nothing of mkma's"} (ARCHITECTURE.md, "Layers")`,
    severity: 'error',
    from: { path: `^${from}/` },
    to: { path: `^(${forbidden.join('|')})/` },
  };
});

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'cli-on-top',
      comment: 'only cli/ itself (and bin/mkma.js, and the tests) may import cli/: the layers below take what they need as arguments',
      severity: 'error',
      from: { pathNot: '^(cli|test)/' },
      to: { path: '^cli/' },
    },
    {
      name: 'no-circular',
      comment: 'no import cycles: a module and what it imports can be read (and loaded) in order',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'no-dev-dependencies-in-code',
      comment: 'mkma ships without its devDependencies (npm ci --omit=dev, the copy in the image)',
      severity: 'error',
      from: { path: '^(lib|format|config|init|persist|qemu|install|builder|cli)/' },
      to: { dependencyTypes: ['npm-dev'] },
    },
    {
      name: 'not-unresolvable',
      comment: 'an import that resolves to nothing',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules|bench/cache|\\.test-work)/' },
    tsConfig: { fileName: 'tsconfig.test.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
