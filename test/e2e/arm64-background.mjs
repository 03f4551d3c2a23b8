// The arm64 test image's build, run in the background for the whole e2e run
// (test/e2e/global-setup.ts starts it detached; test/e2e/arm64.test.ts waits for it). Its
// bootstrap (~280 s of qemu-user on a quiet CI machine) is nearly all one process on one
// core: started at the beginning, it overlaps the amd64 image's build and the tests before
// arm64's, on the second core, instead of running while nothing else does.
//
//   node arm64-background.mjs CONFIG OUT STATE_DIR WATCH_PID TIMEOUT_SEC
//
// Writes STATE_DIR/state.json (atomically): {status: running | done | failed, pid, started,
// seconds, exit, reason}, the build's stderr (its progress) to STATE_DIR/build.log and its
// stdout to STATE_DIR/build.out. It can never outlive the run: when WATCH_PID (jest) is gone,
// or after TIMEOUT_SEC, the build's process group is ended (SIGTERM: mkma's own cleanup
// unmounts and stops its children; SIGKILL 20 s later) and the state says why.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const [config, out, stateDir, watchPid, timeoutSec] = process.argv.slice(2);
const MKMA = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'mkma.js');
const started = Date.now();
let state = { status: 'running', pid: process.pid, started: new Date(started).toISOString() };

function writeState(extra) {
  state = { ...state, ...extra, seconds: (Date.now() - started) / 1000 };
  const file = path.join(stateDir, 'state.json');
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2) + '\n');
  fs.renameSync(`${file}.tmp`, file);
}

fs.mkdirSync(stateDir, { recursive: true });
writeState({});
const build = spawn('node', [MKMA, 'build', '--config', config, '--out', out], {
  // its own process group: ended as a whole (mmdebstrap and its chroot's processes with it)
  detached: true,
  stdio: ['ignore', fs.openSync(path.join(stateDir, 'build.out'), 'w'), fs.openSync(path.join(stateDir, 'build.log'), 'w')],
  env: { ...process.env, MKMA_QEMU_TEST: '' },
});

let stopping = null;
function stop(reason) {
  if (stopping) return;
  stopping = reason;
  try {
    process.kill(-build.pid, 'SIGTERM');
  } catch {
    // already gone
  }
  setTimeout(() => {
    try {
      process.kill(-build.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, 20_000).unref();
}

const watch = setInterval(() => {
  if (Date.now() - started > Number(timeoutSec) * 1000) stop(`timed out after ${timeoutSec} s`);
  try {
    process.kill(Number(watchPid), 0);
  } catch {
    stop(`the test run (pid ${watchPid}) ended before the build did`);
  }
}, 2000);

build.on('error', (e) => {
  clearInterval(watch);
  writeState({ status: 'failed', reason: `cannot start mkma build: ${e.message}` });
});
build.on('exit', (code, signal) => {
  clearInterval(watch);
  if (stopping) writeState({ status: 'failed', exit: code, reason: `stopped: ${stopping}` });
  else if (code === 0) writeState({ status: 'done', exit: 0 });
  else writeState({ status: 'failed', exit: code, reason: `mkma build exited with ${signal ?? code}` });
});
for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(s, () => stop(`the runner got ${s}`));
