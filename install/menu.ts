// GRUB's menu, made from what is on the stick (install/stick.ts reads it), never from memory:
// for every hostname its current generation (normal boot, and recovery without layers) and,
// after an update, the previous one. Pure text; install/stick.ts writes it.
//
// grub.cfg itself is written once and never changes: it sources menu.cfg, or menu.cfg.new when
// a power cut fell between the two steps that replace menu.cfg on FAT (delete, rename).
import { CMDLINE, FILES } from '../lib/contract.js';
import { UsageError } from '../lib/errors.js';
import { DATA_IMAGES_DIR, ESP_PATHS, espGenerationDir } from './layout.js';

export interface GenerationRecord {
  hostname: string;
  generation: number;
  /** when this generation was put on the stick (ISO 8601) */
  installedAt: string;
  mkmaVersion: string;
  kernelVersion: string;
  base: { file: string; bytes: number; sha256: string };
  kernelBytes: number;
  initramfsBytes: number;
  /** from the build's mkma.json ('' when unknown) */
  kernelSha256: string;
  initramfsSha256: string;
  /** extra kernel command line words (install --append), carried over by update */
  append: string[];
}

export interface HostMenu {
  hostname: string;
  /** complete generations, newest first: [current, previous?] */
  generations: GenerationRecord[];
}

export interface MenuInput {
  /** the data filesystem's UUID (inside LUKS when encrypted) */
  dataUuid: string;
  /** the LUKS2 container's UUID, when the data partition is encrypted */
  luksUuid?: string;
  hosts: HostMenu[];
  timeoutSec: number;
}

/**
 * Words install --append may add to the kernel command line: nothing GRUB's script parser would
 * read as syntax (quotes, `$`, `;`, braces, backslashes, whitespace).
 */
export const APPEND_WORD_RE = /^[A-Za-z0-9_.,:=/+@%-]+$/;

export const MENU_TIMEOUT_SEC = 5;

/** The stable grub.cfg: the serial console when there is one, then the menu. */
export function grubCfg(): string {
  return `# Written by mkma install. The menu is in menu.cfg, made by mkma install and mkma update
# from what is on this stick; menu.cfg.new is the next one while it replaces menu.cfg.
if serial --unit=0 --speed=115200; then
  terminal_input --append serial
  terminal_output --append serial
fi
if [ -f ${ESP_PATHS.menuCfg} ]; then
  source ${ESP_PATHS.menuCfg}
elif [ -f ${ESP_PATHS.menuCfgNew} ]; then
  source ${ESP_PATHS.menuCfgNew}
else
  echo "mkma: no menu on this stick (${ESP_PATHS.menuCfg}); run mkma install or mkma update again"
fi
`;
}

/** The kernel command line of a generation's entries (before `extra`). */
export function kernelCommandLine(input: MenuInput, g: GenerationRecord, extra: string[] = []): string {
  return [
    `${CMDLINE.storageDevice}=UUID=${input.dataUuid}`,
    `${CMDLINE.imagesPath}=/${DATA_IMAGES_DIR}/${g.hostname}`,
    `${CMDLINE.base}=${g.base.file}`,
    ...(input.luksUuid ? [`${CMDLINE.luks}=UUID=${input.luksUuid}`] : []),
    ...extra,
    ...g.append,
  ].join(' ');
}

/** GRUB single quotes take anything but a single quote. */
const quote = (s: string) => `'${s.replace(/'/g, '')}'`;

function entry(title: string, id: string, input: MenuInput, g: GenerationRecord, extra: string[] = []): string {
  const dir = espGenerationDir(g.hostname, g.generation);
  return [
    `menuentry ${quote(title)} --id ${quote(id)} {`,
    `  echo ${quote(`mkma: loading ${g.hostname}, generation ${g.generation} (kernel ${g.kernelVersion})`)}`,
    `  linux ${dir}/${FILES.kernel} ${kernelCommandLine(input, g, extra)}`,
    `  initrd ${dir}/${FILES.initramfs}`,
    '}',
  ].join('\n');
}

const day = (iso: string) => iso.slice(0, 10);

export function menuCfg(input: MenuInput): string {
  const out = [
    '# Made by mkma install / mkma update from what is on this stick: do not edit (the next run replaces it).',
    `set timeout=${input.timeoutSec}`,
    'set default=0',
    '',
  ];
  for (const h of [...input.hosts].sort((a, b) => (a.hostname < b.hostname ? -1 : 1))) {
    const [current, previous] = h.generations;
    if (!current) continue;
    out.push(entry(`mkma: ${h.hostname}`, `mkma-${h.hostname}`, input, current));
    if (previous) {
      out.push(
        entry(
          `mkma: ${h.hostname}, previous generation (installed ${day(previous.installedAt)})`,
          `mkma-${h.hostname}-previous`,
          input,
          previous,
        ),
      );
    }
    // mkma_layers=none: the base alone (the init applies no layer), for a layer that breaks the boot
    out.push(entry(`mkma: ${h.hostname}, recovery (no layers)`, `mkma-${h.hostname}-recovery`, input, current, [`${CMDLINE.layers}=none`]));
    out.push('');
  }
  return out.join('\n');
}

export function checkAppend(words: string[]): string[] {
  for (const w of words) {
    if (!APPEND_WORD_RE.test(w))
      throw new UsageError(`--append word "${w}" has characters GRUB would read as syntax (allowed: letters, digits, _ . , : = / + @ % -)`);
  }
  return words;
}
