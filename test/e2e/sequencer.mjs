// Jest's own order (failed first, then slowest, then largest), with test/e2e/arm64.test.ts
// last: its image builds in the background from the start of the run (global-setup.ts), so
// every test before it is time that build does not have to be waited for.
import jestSequencer from '@jest/test-sequencer';

const Sequencer = jestSequencer.default ?? jestSequencer;
const LAST = /[/\\]test[/\\]e2e[/\\]arm64\.test\.ts$/;

export default class ArmLastSequencer extends Sequencer {
  async sort(tests) {
    const sorted = await super.sort(tests);
    return [...sorted.filter((t) => !LAST.test(t.path)), ...sorted.filter((t) => LAST.test(t.path))];
  }
}
