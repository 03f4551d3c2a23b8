// A real terminal for the terminal UI tests: tmux runs a command at a fixed size, keys are
// typed with send-keys, the screen is read with capture-pane.
import { execFileSync, spawnSync } from 'node:child_process';

const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface TmuxSession {
  /** the visible screen, as text */
  screen(): string;
  /** the screen once it matches `re`; throws with the screen when it never does */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  /** each key (tmux send-keys names: 'Down', 'Space', 'Enter', or literal text), 250 ms apart */
  keys(...ks: string[]): Promise<void>;
  /** ends the session (harmless when it is gone) */
  kill(): void;
}

/**
 * Starts `command` (a shell command line) in a new detached tmux session `name`, cols × rows.
 * Run it under `env -u CI`: ink renders only the last frame when it believes it runs in CI.
 */
export function startTmux(name: string, command: string, cols = 80, rows = 24): TmuxSession {
  tmux('new-session', '-d', '-s', name, '-x', String(cols), '-y', String(rows), command);
  const screen = () => tmux('capture-pane', '-p', '-t', name);
  return {
    screen,
    async waitFor(re, timeoutMs = 20_000) {
      const t0 = Date.now();
      for (;;) {
        const s = screen();
        if (re.test(s)) return s;
        if (Date.now() - t0 > timeoutMs) throw new Error(`screen never matched ${re}:\n${s}`);
        await sleep(100);
      }
    },
    async keys(...ks) {
      for (const k of ks) {
        tmux('send-keys', '-t', name, k);
        await sleep(250);
      }
    },
    kill: () => void spawnSync('tmux', ['kill-session', '-t', name]),
  };
}
