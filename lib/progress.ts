// Progress for long work, on stderr: one line per stage with its duration; live counters on a
// terminal (rewritten in place), a line every few seconds otherwise (CI logs stay readable).
export interface Stage {
  progress(text: string): void;
  /** A step of the stage worth a line of its own, on a terminal and in a log alike. */
  step(text: string): void;
  /**
   * Work measured in bytes and entries: what is done of the total (when known), the
   * percentage and the time left, e.g. `41 MiB of 84 MiB (49%), 5210 of 10512 entries, 0:05 left`.
   * `bytesLabel` says what the bytes are when it is not obvious ("compressed").
   */
  count(done: Count, total?: Partial<Count>, bytesLabel?: string): void;
  done(summary?: string): number;
}

export interface Count {
  bytes: number;
  entries: number;
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

/** `m:ss` (or `h:mm:ss`) for an ETA. */
export function formatDuration(secs: number): string {
  const s = Math.max(0, Math.round(secs));
  const [h, m, r] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}

/**
 * The text of Stage.count. The fraction is of bytes when their total is known, else of
 * entries; the time left is the elapsed time scaled by what remains, shown once there is
 * enough behind it (a second, 2 %) to mean something.
 */
export function describeCount(done: Count, total: Partial<Count>, elapsedSecs: number, bytesLabel = ''): string {
  const label = bytesLabel ? ` ${bytesLabel}` : '';
  const parts = [
    total.bytes ? `${formatBytes(done.bytes)} of ${formatBytes(total.bytes)}${label}` : `${formatBytes(done.bytes)}${label}`,
    total.entries ? `${done.entries} of ${total.entries} entries` : `${done.entries} entries`,
  ];
  const fraction = total.bytes ? done.bytes / total.bytes : total.entries ? done.entries / total.entries : null;
  if (fraction === null) return parts.join(', ');
  const f = Math.min(1, fraction);
  parts[0] += ` (${Math.floor(f * 100)}%)`;
  if (elapsedSecs >= 1 && f >= 0.02 && f < 1) parts.push(`${formatDuration((elapsedSecs * (1 - f)) / f)} left`);
  return parts.join(', ');
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
        count(d, total = {}, bytesLabel) {
          this.progress(describeCount(d, total, (performance.now() - t0) / 1000, bytesLabel));
        },
        step(text) {
          if (live) write('\r\x1b[K');
          live = false;
          write(`    ${text}\n`);
          // the step's own progress may follow at once
          lastPrint = 0;
        },
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
