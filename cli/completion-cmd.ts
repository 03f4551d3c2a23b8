// `mkma completion bash|zsh`: the completion script, made from every command's options.
import { EXIT, UsageError } from '../lib/errors.js';
import { parse, printHelp, renderHelp, type CommandContext, type CommandSpec } from './args.js';
import { bashCompletion, zshCompletion } from './completion.js';

export const SPEC = {
  name: 'completion',
  synopsis: 'bash|zsh',
  description: `Prints a completion script for bash or zsh: commands, their options, and the values those
take (files, directories, fixed words), made from the same tables as each command's --help.`,
  positionals: { max: 1, complete: ['bash', 'zsh'] },
  options: [{ long: 'json', help: "every command's options as JSON (name, short, value, help, completion)" }],
  sections: [
    [
      'Installing',
      `  bash   mkma completion bash > /etc/bash_completion.d/mkma        (or: source <(mkma completion bash))
  zsh    mkma completion zsh > "\${fpath[1]}/_mkma"                  (then: compinit)`,
    ],
  ],
  exitStatus: '0 printed, 2 no or an unknown shell.',
  examples: ['source <(mkma completion bash)'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[], context: CommandContext): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const commands = await context.commands();
  if (values.json) {
    process.stdout.write(
      JSON.stringify(
        commands.map((c) => ({ ...c.spec, summary: c.summary })),
        null,
        2,
      ) + '\n',
    );
    return EXIT.ok;
  }
  const shell = positionals[0];
  const topics = commands.map((c) => c.name);
  if (shell === 'bash') process.stdout.write(bashCompletion(commands, topics));
  else if (shell === 'zsh') process.stdout.write(zshCompletion(commands, topics));
  else
    throw new UsageError(
      `completion: ${shell === undefined ? 'which shell? ' : `no completion for "${shell}": `}bash or zsh (mkma completion bash)`,
    );
  return EXIT.ok;
}
