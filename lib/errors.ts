// The error hierarchy every layer of mkma throws. Each class carries its exit code, so the CLI
// maps an error to a status with one `instanceof` (lib is the ground floor: it imports nothing
// of mkma's, and everything may import it).
//
// Exit codes mean something: scripts can tell a usage mistake from a failed build.
export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  environment: 3,
  bootFailed: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** Something went wrong doing the work (exit 1). The base of every mkma error. */
export class MkmaError extends Error {
  get exitCode(): ExitCode {
    return EXIT.failed;
  }
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bad command line or configuration: nothing was done (exit 2). */
export class UsageError extends MkmaError {
  override get exitCode(): ExitCode {
    return EXIT.usage;
  }
}

/** The machine cannot run this (not root, missing tools): nothing was done (exit 3). */
export class EnvironmentError extends MkmaError {
  override get exitCode(): ExitCode {
    return EXIT.environment;
  }
}

/** The image was built but did not boot in QEMU (exit 4). */
export class BootFailedError extends MkmaError {
  override get exitCode(): ExitCode {
    return EXIT.bootFailed;
  }
}

/** The exit code for anything thrown: mkma's errors carry theirs, anything else is a failure. */
export function exitCodeOf(e: unknown): ExitCode {
  return e instanceof MkmaError ? e.exitCode : EXIT.failed;
}
