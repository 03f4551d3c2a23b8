// What the layer will hold, node by node: the rules' decision for each change, the owner's
// choices on top (a choice covers its subtree; the deepest wins), and the counts the view shows.
// One decision type throughout: the rules' Decision per entry (persist/model.ts); `Inclusion`
// is its state over the whole tree, and `includeFn` turns it into the writer's Include.
import { decide, overrideFor, type ChangeEntry, type Decision, type Include, type Overrides } from './model.js';
import type { ChangeTree } from './change-tree.js';

export type DecisionCache = Map<string, { type: ChangeEntry['type']; decision: Decision }>;

/** The rules' decision for every node; `cache` (by path, checked against the type) saves work across rescans. */
export function ruleDecisions(tree: ChangeTree, decideRule: (e: ChangeEntry) => Decision, cache?: DecisionCache): Decision[] {
  const out: Decision[] = new Array(tree.entries.length);
  for (let i = 0; i < tree.entries.length; i++) {
    const e = tree.entries[i];
    const c = cache?.get(e.path);
    if (c && c.type === e.type) {
      out[i] = c.decision;
      continue;
    }
    const d = decideRule(e);
    cache?.set(e.path, { type: e.type, decision: d });
    out[i] = d;
  }
  return out;
}

export interface Inclusion {
  /** 1 if this change is included (0 for containers) */
  own: Uint8Array;
  /** 1 if a choice of the user (not a rule) decides this node */
  overridden: Uint8Array;
  /** included changes in the subtree, the node itself included */
  inc: Int32Array;
  /** bytes of the included changes in the subtree */
  incBytes: Float64Array;
}

export type IncludeState = 'all' | 'none' | 'partial';

/** Decides the nodes of the range [from, to) (a whole subtree), `inherited` being the choice above it. */
function decideRange(
  tree: ChangeTree,
  rules: Decision[],
  overrides: Overrides,
  inc: Inclusion,
  from: number,
  to: number,
  inherited: boolean | undefined,
): void {
  // choice in effect per node of the range: -1 none, 0 exclude, 1 include
  const eff = new Int8Array(to - from);
  const inh = inherited === undefined ? -1 : inherited ? 1 : 0;
  for (let i = from; i < to; i++) {
    const o = overrides.size ? overrides.get(tree.entries[i].path) : undefined;
    let v: number;
    if (o !== undefined) v = o ? 1 : 0;
    else {
      const p = tree.parent[i];
      v = p >= from ? eff[p - from] : inh;
    }
    eff[i - from] = v;
    inc.overridden[i] = v >= 0 ? 1 : 0;
    inc.own[i] = tree.counted[i] ? (v >= 0 ? v : rules[i].included ? 1 : 0) : 0;
  }
  for (let i = to - 1; i >= from; i--) {
    inc.inc[i] = 0;
    inc.incBytes[i] = 0;
  }
  for (let i = to - 1; i >= from; i--) {
    if (inc.own[i]) {
      inc.inc[i] += 1;
      inc.incBytes[i] += tree.entries[i].size;
    }
    const p = tree.parent[i];
    if (p >= from) {
      inc.inc[p] += inc.inc[i];
      inc.incBytes[p] += inc.incBytes[i];
    }
  }
}

export function computeInclusion(tree: ChangeTree, rules: Decision[], overrides: Overrides): Inclusion {
  const n = tree.entries.length;
  const inc: Inclusion = { own: new Uint8Array(n), overridden: new Uint8Array(n), inc: new Int32Array(n), incBytes: new Float64Array(n) };
  decideRange(tree, rules, overrides, inc, 0, n, undefined);
  return inc;
}

/** After the choices on `i` or below it changed: recompute its subtree, then its ancestors' counts. */
export function updateInclusion(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number): void {
  const before = inc.inc[i];
  const beforeBytes = inc.incBytes[i];
  const p = tree.parent[i];
  const inherited = p >= 0 ? overrideFor(tree.entries[p].path, overrides) : undefined;
  decideRange(tree, rules, overrides, inc, i, tree.end[i], inherited);
  const d = inc.inc[i] - before;
  const db = inc.incBytes[i] - beforeBytes;
  for (let a = p; a >= 0; a = tree.parent[a]) {
    inc.inc[a] += d;
    inc.incBytes[a] += db;
  }
}

export function includeState(tree: ChangeTree, inc: Inclusion, i: number): IncludeState {
  const total = tree.changes[i];
  const n = inc.inc[i];
  if (n === 0) return 'none';
  return n === total ? 'all' : 'partial';
}

/**
 * Would the layer hold this node? A change: the decision on it. A container directory: yes when
 * something below it is saved (it has to exist for that).
 */
export function nodeIncluded(tree: ChangeTree, inc: Inclusion, i: number): boolean {
  return tree.counted[i] ? inc.own[i] === 1 : inc.inc[i] > 0;
}

/** The user's choice for a subtree: sets it on `i` and forgets the choices below (the subtree follows). */
export function setChoice(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number, include: boolean): void {
  const path = tree.entries[i].path;
  const prefix = `${path}/`;
  for (const k of [...overrides.keys()]) if (k.startsWith(prefix)) overrides.delete(k);
  overrides.set(path, include);
  updateInclusion(tree, rules, overrides, inc, i);
}

/** Space: include the subtree, or exclude it when it is already wholly included. Returns the new choice. */
export function toggleChoice(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number): boolean {
  const include = includeState(tree, inc, i) !== 'all';
  setChoice(tree, rules, overrides, inc, i, include);
  return include;
}

export interface Summary {
  /** entries the layer will hold: the included changes and the directories they need */
  entries: number;
  bytes: number;
  /** included changes (containers not counted) */
  changes: number;
  /** included whiteouts */
  deleted: number;
  /** included opaque directories */
  replaced: number;
  /** changes left out, and their bytes */
  excluded: number;
  excludedBytes: number;
}

export function summarize(tree: ChangeTree, inc: Inclusion): Summary {
  const s: Summary = { entries: 0, bytes: 0, changes: 0, deleted: 0, replaced: 0, excluded: 0, excludedBytes: 0 };
  const n = tree.entries.length;
  for (let i = 0; i < n; i++) {
    const e = tree.entries[i];
    if (tree.counted[i]) {
      if (inc.own[i]) {
        s.entries++;
        s.changes++;
        s.bytes += e.size;
        if (e.kind === 'deleted') s.deleted++;
        else if (e.kind === 'replaced') s.replaced++;
      } else {
        s.excluded++;
        s.excludedBytes += e.size;
      }
    } else if (!tree.synthetic[i] && inc.inc[i] > 0) {
      s.entries++;
      s.bytes += e.size;
    }
  }
  return s;
}

export function totals(tree: ChangeTree, inc: Inclusion): { changes: number; bytes: number; included: number; includedBytes: number } {
  const t = { changes: 0, bytes: 0, included: 0, includedBytes: 0 };
  for (let i = 0; i < tree.entries.length; i = tree.end[i]) {
    t.changes += tree.changes[i];
    t.bytes += tree.bytes[i];
    t.included += inc.inc[i];
    t.includedBytes += inc.incBytes[i];
  }
  return t;
}

/**
 * The writer's Include, frozen at the time of the call: entries of this tree answer from the
 * inclusion; others (a newer scan) from the rules and the choices.
 */
export function freezeInclusion(tree: ChangeTree, inc: Inclusion, overrides: Overrides, decideRule: (e: ChangeEntry) => Decision): Include {
  const own = inc.own.slice();
  const below = inc.inc.slice();
  const choices = new Map(overrides);
  return (e) => {
    const i = tree.byPath.get(e.path);
    if (i !== undefined && tree.entries[i].type === e.type) return tree.counted[i] ? own[i] === 1 : below[i] > 0;
    if (e.kind === 'container') return true;
    return decide(e, decideRule(e), choices).included;
  };
}
