// File names in an images directory, and the order in which layers apply.
//
// The classic mkma.sh applied `persistence.*` in glob order, so `persistence.10` came before
// `persistence.2`. mkma orders by *natural* order of the part between the prefix and the
// suffix (digit runs compare as numbers). The init does the same in awk (see
// init/templates/layer-common.sh, `sort_layers`); both are tested against test/fixtures/layer-order.txt.

import { FILES } from '../lib/contract.js';

export const BASE_NAME = FILES.base;
export const INITRAMFS_NAME = FILES.initramfs;
export const KERNEL_NAME = FILES.kernel;
export const BUILD_INFO_NAME = FILES.buildInfo;
export const LAYER_PREFIX = FILES.layerPrefix;
export const LAYER_SUFFIX = FILES.layerSuffix;
/** What may stand between prefix and suffix; anything else is not a layer (and is reported). */
export const LAYER_ID_RE = /^[0-9A-Za-z][0-9A-Za-z._+-]*$/;

export function layerId(fileName: string): string | null {
  if (!fileName.startsWith(LAYER_PREFIX) || !fileName.endsWith(LAYER_SUFFIX)) return null;
  const id = fileName.slice(LAYER_PREFIX.length, fileName.length - LAYER_SUFFIX.length);
  return LAYER_ID_RE.test(id) ? id : null;
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

/** persistence.20261122T021500Z.cpio.zst — fixed width, so it also sorts right in plain glob order. */
export function layerNameFor(date: Date, suffix = ''): string {
  const iso = date.toISOString(); // 2026-11-22T02:15:00.123Z
  const stamp = iso.slice(0, 19).replace(/[-:]/g, '') + 'Z';
  return `${LAYER_PREFIX}${stamp}${suffix}${LAYER_SUFFIX}`;
}

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
