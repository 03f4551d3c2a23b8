// Fuzzing mkma-unpack (init/unpack/mkma-unpack.c) with libFuzzer, ASan and UBSan
// (test/fuzz/fuzz-unpack.c): seeded with the conformance corpus (test/conformance/) and the
// plain cpio streams inside it, for MKMA_FUZZ_SECONDS seconds (60 in `npm test`; `npm run
// fuzz -- --seconds 3600` for a long run). A crash, a sanitizer report, a leak, a timeout or
// a write outside the target is a finding: the test fails and names the input libFuzzer
// saved (.test-work/fuzz/crash-…). Needs clang with its fuzzer runtime (apt-get install
// clang-14 libclang-rt-14-dev).
import { beforeAll, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { unpackerSource, writeContractHeader } from '../../builder/unpacker.js';
import { runSync } from '../../lib/run.js';
import { corpus } from '../conformance/corpus.js';
import { writeRawImage } from '../conformance/images.js';
import { REPO } from '../helpers/paths.js';

const SECONDS = Number(process.env.MKMA_FUZZ_SECONDS ?? 60);
const WORK = path.join(REPO, '.test-work', 'fuzz');
const CLANG = ['clang-14', 'clang'].find((c) => runSync('sh', ['-c', `command -v ${c}`], { allowFailure: true }).ok);

beforeAll(() => {
  if (!CLANG) throw new Error('clang is not installed: apt-get install clang-14 libclang-rt-14-dev (the fuzz run needs it)');
});

function seeds(dir: string): number {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  let n = 0;
  for (const c of corpus('/nonexistent/victim')) {
    // the deep tree and the long names are large and slow inputs; the rest is what matters
    if (c.name === 'deep-tree') continue;
    const images = [c.base, ...c.layers.map((l) => l.image)];
    for (const img of images) {
      if (typeof img === 'string') continue;
      const f = path.join(dir, `${c.name}-${n++}`);
      writeRawImage(f, img);
      try {
        // the plain cpio stream too (mkma-unpack -)
        fs.writeFileSync(`${f}.cpio`, execFileSync('zstd', ['-q', '-dc', f], { maxBuffer: 64 << 20 }));
      } catch {
        // damaged on purpose: no stream to take
      }
    }
  }
  return n;
}

test(
  `mkma-unpack survives ${SECONDS} s of libFuzzer (ASan, UBSan), from the conformance corpus`,
  () => {
    fs.mkdirSync(WORK, { recursive: true });
    const header = writeContractHeader(WORK);
    const bin = path.join(WORK, 'fuzz-unpack');
    const cc = runSync(
      CLANG!,
      [
        '-g',
        '-O1',
        '-fsanitize=fuzzer,address,undefined',
        '-fno-sanitize-recover=undefined',
        '-include',
        header,
        '-o',
        bin,
        path.join(path.dirname(unpackerSource()), '..', '..', 'test', 'fuzz', 'fuzz-unpack.c'),
        '-lzstd',
        '-lpthread',
      ],
      { allowFailure: true },
    );
    expect(cc.stderr).toBe('');
    const seedDir = path.join(WORK, 'seeds');
    const found = path.join(WORK, 'corpus');
    expect(seeds(seedDir)).toBeGreaterThan(40);
    fs.mkdirSync(found, { recursive: true });
    const r = runSync(
      bin,
      [
        `-max_total_time=${SECONDS}`,
        '-timeout=30',
        '-rss_limit_mb=4096',
        '-max_len=1048576',
        `-artifact_prefix=${WORK}/`,
        '-print_final_stats=1',
        found,
        seedDir,
      ],
      {
        allowFailure: true,
        timeoutMs: (SECONDS + 240) * 1000,
        env: { ASAN_OPTIONS: 'detect_leaks=1', UBSAN_OPTIONS: 'print_stacktrace=1' },
      },
    );
    const tail = r.stderr.split('\n').slice(-40).join('\n');
    const runs = /stat::number_of_executed_units:\s*(\d+)/.exec(r.stderr)?.[1];
    console.log(
      `fuzz: ${runs ?? '?'} inputs in ${SECONDS} s, corpus ${fs.readdirSync(found).length} + ${fs.readdirSync(seedDir).length} seeds`,
    );
    expect({ status: r.status, signal: r.signal, tail: r.status === 0 ? '' : tail }).toEqual({ status: 0, signal: null, tail: '' });
  },
  (SECONDS + 600) * 1000,
);
