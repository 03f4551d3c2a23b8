// File names in an images directory, the order in which layers apply, and a layer's state.
//
// The classic mkma.sh applied `persistence.*` in glob order, so `persistence.10` came before
// `persistence.2`. mkma orders by *natural* order of the part between the prefix and the
// suffix (digit runs compare as numbers). The init does the same in awk (see
// init/templates/layer-common.sh, `sort_layers`); both are tested against test/fixtures/layer-order.txt.
//
// A layer's state is part of its name, after the id: `persistence.ID[@STATE].cpio.zst`
// (docs/FORMAT.md "Layer names and states"; the shell sibling is `layer_state` in
// layer-common.sh, both tested against test/fixtures/layer-states.txt). The order is the id's:
// changing a state (a rename) never moves a layer.

import { FILES, LAYER_STATE } from '../lib/contract.js';

export const BASE_NAME = FILES.base;
export const INITRAMFS_NAME = FILES.initramfs;
export const KERNEL_NAME = FILES.kernel;
export const BUILD_INFO_NAME = FILES.buildInfo;
export const LAYER_PREFIX = FILES.layerPrefix;
export const LAYER_SUFFIX = FILES.layerSuffix;
/** What may stand between prefix and suffix; anything else is not a layer (and is reported). */
export const LAYER_ID_RE = /^[0-9A-Za-z][0-9A-Za-z._+-]*$/;

export type LayerStatus = 'active' | 'disabled' | 'trial' | 'failed';

export interface LayerState {
  status: LayerStatus;
  /** never removed by `mkma layers prune` */
  pinned: boolean;
  /** trial: boots left before it fails (0: its last try was this boot or an unfinished one) */
  triesLeft: number;
  /** trial, failed: boots started with it that did not end good */
  triesDone: number;
}

export interface LayerName extends LayerState {
  /** the file name */
  file: string;
  /** what stays when the state changes: the layer's identity (`persistence.ID.cpio.zst` minus prefix, suffix) */
  id: string;
}

export const ACTIVE: LayerState = { status: 'active', pinned: false, triesLeft: 0, triesDone: 0 };

const S = LAYER_STATE;
const STATUS_RE = new RegExp(`^(?:${S.disabled}|${S.trial}-([0-9])-([0-9])|${S.failed}-([0-9]))$`);

/** STATE (the part after `@`) → the state, or null when it is not one mkma writes. */
function parseState(text: string): LayerState | null {
  let rest = text;
  let pinned = false;
  if (rest === S.pinned) return { ...ACTIVE, pinned: true };
  if (rest.endsWith(S.flagSeparator + S.pinned)) {
    pinned = true;
    rest = rest.slice(0, -(S.flagSeparator.length + S.pinned.length));
  }
  const m = STATUS_RE.exec(rest);
  if (!m) return null;
  if (m[1] !== undefined) return { status: 'trial', pinned, triesLeft: Number(m[1]), triesDone: Number(m[2]) };
  if (m[3] !== undefined) return { status: 'failed', pinned, triesLeft: 0, triesDone: Number(m[3]) };
  return { status: 'disabled', pinned, triesLeft: 0, triesDone: 0 };
}

/** A layer's file name read: its id and state; null when it is not a layer name. */
export function parseLayerName(fileName: string): LayerName | null {
  if (!fileName.startsWith(LAYER_PREFIX) || !fileName.endsWith(LAYER_SUFFIX)) return null;
  const middle = fileName.slice(LAYER_PREFIX.length, fileName.length - LAYER_SUFFIX.length);
  const at = middle.indexOf(S.separator);
  const id = at < 0 ? middle : middle.slice(0, at);
  if (!LAYER_ID_RE.test(id)) return null;
  const state = at < 0 ? ACTIVE : parseState(middle.slice(at + 1));
  return state && { file: fileName, id, ...state };
}

/** The STATE part of a name ('' for active and not pinned). */
export function stateText(st: LayerState): string {
  const status =
    st.status === 'disabled'
      ? S.disabled
      : st.status === 'trial'
        ? `${S.trial}-${st.triesLeft}-${st.triesDone}`
        : st.status === 'failed'
          ? `${S.failed}-${st.triesDone}`
          : '';
  return [status, st.pinned ? S.pinned : ''].filter(Boolean).join(S.flagSeparator);
}

/** The file name of layer `id` in state `st`. */
export function layerFileName(id: string, st: LayerState): string {
  const state = stateText(st);
  return `${LAYER_PREFIX}${id}${state ? S.separator + state : ''}${LAYER_SUFFIX}`;
}

/**
 * Whether a boot applies a layer in this state (before the init counts a try): active, and on
 * trial with tries left. Disabled, failed, and on trial without tries left (its next boot
 * marks it failed) are not applied. `mkma unpack` applies what the next boot would.
 */
export function appliedAtBoot(st: LayerState): boolean {
  return st.status === 'active' || (st.status === 'trial' && st.triesLeft > 0);
}

/** The layer's id (the name without prefix, state and suffix), or null for any other name. */
export function layerId(fileName: string): string | null {
  return parseLayerName(fileName)?.id ?? null;
}

/** Sort key: every digit run left-padded to 20 digits, so byte order == natural order. */
export function naturalKey(s: string): string {
  return s.replace(/[0-9]+/g, (d) => d.replace(/^0+(?=.)/, '').padStart(20, '0'));
}

export function sortLayerNames(names: string[]): string[] {
  return names
    .filter((n) => layerId(n) !== null)
    .map((n) => ({ n, k: naturalKey(layerId(n)!) }))
    .sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : a.n < b.n ? -1 : a.n > b.n ? 1 : 0))
    .map((x) => x.n);
}

/**
 * persistence.20261122T021500Z.cpio.zst — fixed width, so it also sorts right in plain glob
 * order; in state `st` (default active).
 */
export function layerNameFor(date: Date, suffix = '', st: LayerState = ACTIVE): string {
  const iso = date.toISOString(); // 2026-11-22T02:15:00.123Z
  const stamp = iso.slice(0, 19).replace(/[-:]/g, '') + 'Z';
  return layerFileName(stamp + suffix, st);
}

/**
 * The state a new layer of mkma persist starts in (persist/write.ts pickLayerName): on trial,
 * LAYER_STATE.tries boots to prove itself (test/e2e/lifecycle.test.ts);
 * `mkma layers bless NAME --tries N` puts a layer on trial again by hand.
 */
export const NEW_LAYER_STATE: LayerState = { status: 'trial', pinned: false, triesLeft: S.tries, triesDone: 0 };

/**
 * The UTC time in a name layerNameFor made (`persistence.20261122T021500Z[-N].cpio.zst` →
 * 2026-11-22T02:15:00Z), or null for any other name (older names, hand-made ones).
 */
export function createdFromName(fileName: string): string | null {
  const id = layerId(fileName);
  const m = id && /^([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z(?:-[0-9]+)?$/.exec(id);
  if (!m) return null;
  const iso = `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z`;
  return Number.isNaN(Date.parse(iso)) ? null : iso;
}
