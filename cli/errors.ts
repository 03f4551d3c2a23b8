// Exit codes mean something: scripts can tell a usage mistake from a failed build.
export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  environment: 3,
  bootFailed: 4,
} as const;

/** Bad command line or configuration: nothing was done. */
export class UsageError extends Error {}
/** The machine cannot run this (not root, missing tools): nothing was done. */
export class EnvironmentError extends Error {}
