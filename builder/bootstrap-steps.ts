// mmdebstrap's output (run with --verbose: apt's and dpkg's lines too) read as the bootstrap's
// steps — its own phases, announced by its "I:" lines — and the progress within a step: the
// packages fetched, unpacked or set up so far, of how many when apt said so.

const DOWNLOAD = 'downloading packages';
const ESSENTIAL = 'installing the essential packages';

/** mmdebstrap's phases (mmdebstrap 1.x `info` texts) and the step each one is shown as. */
const PHASES: Array<[RegExp, string]> = [
  [/^I: running apt-get update/, 'updating the package lists'],
  [/^I: downloading packages with apt/, DOWNLOAD],
  [/^I: extracting archives/, 'extracting the essential packages'],
  [/^I: installing essential packages/, ESSENTIAL],
  [/^I: installing remaining packages inside the chroot/, 'installing the remaining packages'],
  [/^I: cleaning package lists and apt cache/, 'cleaning the package lists and apt cache'],
];

export type BootstrapEvent = { step: string } | { progress: string } | { done: number };

/** Reads mmdebstrap's lines one at a time; each yields a step, a progress text, or nothing. */
export class BootstrapSteps {
  /** the steps seen, in order */
  readonly steps: string[] = [];
  private total = 0;
  private fetched = 0;
  /** fetched in the download step */
  private downloaded = 0;
  private unpacked = 0;
  private setUp = 0;

  line(raw: string): BootstrapEvent | null {
    const l = raw.trimEnd();
    for (const [re, step] of PHASES) {
      if (re.test(l)) {
        this.steps.push(step);
        // the essential packages are installed by dpkg, which names no total: they are what
        // the download step fetched
        this.total = step === ESSENTIAL ? this.downloaded : 0;
        if (step === DOWNLOAD) this.downloaded = 0;
        this.fetched = this.unpacked = this.setUp = 0;
        return { step };
      }
    }
    const success = /^I: success in ([\d.]+) seconds/.exec(l);
    if (success) return { done: Number(success[1]) };
    // apt's plan: "0 upgraded, 85 newly installed, 0 to remove and 0 not upgraded." (apt 2, the
    // host's on bookworm), "  Upgrading: 0, Installing: 85, Removing: 0, Not Upgrading: 0" (apt 3)
    const plan = /^\d+ upgraded, (\d+) newly installed|^\s*Upgrading: \d+, Installing: (\d+)/.exec(l);
    if (plan) {
      this.total = Number(plan[1] ?? plan[2]);
      return null;
    }
    const of = () => (this.total ? ` of ${this.total}` : '');
    // "Get:12 http://deb.debian.org/debian trixie/main amd64 libc6 amd64 2.41-12 [2850 kB]"
    // (not the package lists of apt-get update: "Get:2 http://… trixie/main amd64 Packages [9670 kB]")
    const get = /^Get:\d+ \S+ \S+ \S+ (\S+) \S+ \S+ \[([^\]]+)\]$/.exec(l);
    if (get) {
      this.fetched++;
      this.downloaded++;
      return { progress: `${this.fetched}${of()} fetched: ${get[1]} (${get[2]})` };
    }
    const unpack = /^Unpacking ([^\s:]+)/.exec(l);
    // (dpkg names a package with its architecture, "libc6:amd64", where it may have several)
    if (unpack) {
      this.unpacked++;
      return { progress: `${this.unpacked}${of()} unpacked: ${unpack[1]}` };
    }
    const setUp = /^Setting up ([^\s:]+)/.exec(l);
    if (setUp) {
      this.setUp++;
      return { progress: `${this.setUp}${of()} set up: ${setUp[1]}` };
    }
    return null;
  }
}

/** The last `n` non-empty lines of a log, for an error message. */
export function lastLines(lines: string[], n: number): string[] {
  return lines.filter((l) => l.trim()).slice(-n);
}
