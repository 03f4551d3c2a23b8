// Progress for long work, on stderr: one line per stage with its duration; live counters on a
// terminal (rewritten in place), a line every few seconds otherwise (CI logs stay readable).
export interface Stage {
  progress(text: string): void;
  done(summary?: string): number;
}

export interface Reporter {
  stage(name: string, text?: string): Stage;
  info(text: string): void;
  warn(text: string): void;
  readonly timings: Record<string, number>;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function createReporter(opts: { quiet: boolean; stream?: NodeJS.WriteStream }): Reporter {
  const out = opts.stream ?? process.stderr;
  const tty = !!out.isTTY;
  const timings: Record<string, number> = {};
  const write = (s: string) => {
    if (!opts.quiet) out.write(s);
  };
  return {
    timings,
    stage(name, text) {
      const t0 = performance.now();
      let lastPrint = 0;
      let live = false;
      write(`==> ${name}${text ? `: ${text}` : ''}\n`);
      return {
        progress(p) {
          const now = performance.now();
          if (tty) {
            if (now - lastPrint < 100) return;
            write(`\r\x1b[K    ${p}`);
            live = true;
          } else {
            if (now - lastPrint < 5000) return;
            write(`    ${p}\n`);
          }
          lastPrint = now;
        },
        done(summary) {
          const secs = (performance.now() - t0) / 1000;
          timings[name] = Math.round(secs * 100) / 100;
          if (live) write('\r\x1b[K');
          write(`    ${name} done in ${secs.toFixed(1)} s${summary ? `: ${summary}` : ''}\n`);
          return secs;
        },
      };
    },
    info(text) {
      write(`${text}\n`);
    },
    warn(text) {
      // Warnings are shown even with --quiet: they are about the result.
      out.write(`warning: ${text}\n`);
    },
  };
}
