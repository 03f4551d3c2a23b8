// The syntax of a persist rules file (persist/default.rules, /etc/mkma/persist.rules,
// --include/--exclude), as data: persist/rules.ts implements it, and mkma-persist.rules(5) is
// generated from it (cli/man.ts), so the manual says what the parser does.

/** One line of the syntax: an example and what it means. */
export const RULE_SYNTAX: ReadonlyArray<readonly [string, string]> = [
  ['# comment', 'a comment; blank lines are ignored too'],
  ['/tmp/', 'a leading "/" anchors the pattern to the root; a trailing "/" matches directories only'],
  ['*.swp', 'without a "/" (other than a trailing one) the pattern matches the name at any depth'],
  ['/home/*/.cache/', '"*" and "?" never cross "/"; "[abc]" and "[!a-z]" are character classes'],
  ['/var/**/core', '"**" crosses directories ("a/**/b", "**/x", "x/**")'],
  ['!/tmp/keep-me', 'a leading "!" includes what the pattern matches (a negated rule)'],
  ['\\#name  \\!name', 'a backslash makes the next character literal ("\\ " keeps a trailing space)'],
];

/** How the rules decide, in order. */
export const RULE_MATCHING = `A rule that matches a directory also applies to everything below it, and the last rule that
matches a path or one of its parent directories decides. Unlike git, a later "!" rule can
include a path below an excluded directory again (/var/cache/ then !/var/cache/foo): in a
persist rules file that is what the user means. A change no rule matches is saved.`;

/** Where rules come from, in the order they apply (later ones win). */
export const RULE_SOURCES = `Rules apply in this order: mkma's defaults (persist/default.rules in mkma's installation: temporary files, caches, logs
of one boot, the random seed), then /etc/mkma/persist.rules (or --rules FILE), then
--include and --exclude in the order given. Choices saved as rules from the terminal UI are
appended to the rules file.`;
