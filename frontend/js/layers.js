// Which parameter tensors the per-layer views show, and how: grouped by module path
// into blocks, filtered by a substring or glob, and optionally one row per block (its
// tensors' max or median) that opens into its tensors. No DOM: the heatmap and the
// profiles use it, and tests/js/layers.test.mjs checks it against references.

// Blocks wanted at most before numbered siblings are merged into ranges: a heatmap of
// about twenty rows reads at a glance.
export const MAX_BLOCKS = 24;
export const AGGREGATES = ['none', 'max', 'median'];

const NUMBERED = /^\d+$/;

// The block of a parameter tensor: its module path up to the first numbered module
// (`layer3.4.conv2.weight` -> `layer3.4`, in the group `layer3`; `transformer.h.17.attn.c_attn.weight`
// -> `transformer.h.17`), or its whole module path when nothing is numbered (`fc.weight` -> `fc`).
export function blockOf(name) {
  const mod = name.split('.').slice(0, -1);
  if (!mod.length) return { block: name, group: name }; // a parameter of the model itself
  const k = mod.findIndex(p => NUMBERED.test(p));
  if (k > 0) return { block: mod.slice(0, k + 1).join('.'), group: mod.slice(0, k).join('.') };
  if (k === 0) return { block: mod[0], group: '' }; // a top-level Sequential: `0.weight`
  const path = mod.join('.');
  return { block: path, group: path };
}

// Where a tensor sits, for hover texts: `layer3 › layer3.4 › layer3.4.conv2.weight`.
export function pathOf(name) {
  const { block, group } = blockOf(name);
  return [...new Set([group, block, name].filter(Boolean))].join(' › ');
}

// Blocks of `names` (tensor names in forward order), in order of first appearance:
// [{key, members: [index into names]}]. Past `max` blocks, consecutive numbered blocks of one
// group are merged into ranges (`blocks.0–3`), as few per range as brings the count under `max`.
export function blocksOf(names, max = MAX_BLOCKS) {
  const byKey = new Map();
  for (const [i, name] of names.entries()) {
    const { block, group } = blockOf(name);
    if (!byKey.has(block)) byKey.set(block, { key: block, group, numbered: block !== group, members: [] });
    byKey.get(block).members.push(i);
  }
  const blocks = [...byKey.values()];
  if (blocks.length <= max) return blocks.map(({ key, members }) => ({ key, members }));
  for (let per = 2; ; per++) {
    const merged = mergeRuns(blocks, per);
    if (merged.length <= max || per >= blocks.length) return merged;
  }
}

function mergeRuns(blocks, per) {
  const out = [];
  for (let i = 0; i < blocks.length;) {
    const b = blocks[i];
    let j = i + 1;
    while (b.numbered && j < blocks.length && j - i < per && blocks[j].numbered && blocks[j].group === b.group) j++;
    const run = blocks.slice(i, j);
    const tail = (key, g) => (g ? key.slice(g.length + 1) : key);
    const key = run.length === 1 ? b.key : `${b.key}–${tail(run[run.length - 1].key, b.group)}`;
    out.push({ key, members: run.flatMap(r => r.members) });
    i = j;
  }
  return out;
}

// A filter typed by the person: terms separated by spaces or commas; a tensor is shown when it
// matches one of them (none: all), and no term starting with `!` (those hide). A term with `*`,
// `?` or `[…]` is a glob over the whole name (`*` any characters, dots included); any other
// term matches anywhere in the name. Case is ignored. Returns null for an empty filter.
export function layerMatcher(text) {
  const terms = String(text ?? '').split(/[\s,]+/).filter(Boolean);
  const want = [], hide = [];
  for (const term of terms) {
    const neg = term.startsWith('!');
    const body = neg ? term.slice(1) : term;
    if (!body) continue;
    (neg ? hide : want).push(termTest(body));
  }
  if (!want.length && !hide.length) return null;
  return name => (!want.length || want.some(t => t(name))) && !hide.some(t => t(name));
}

function termTest(term) {
  if (!/[*?[]/.test(term)) {
    const low = term.toLowerCase();
    return name => name.toLowerCase().includes(low);
  }
  const re = new RegExp(`^${globSource(term)}$`, 'i');
  return name => re.test(name);
}

// A glob as a regular expression's source: `*` and `?` as in a shell, `[abc]`/`[!a-z]` as a
// class; anything else literal (an unclosed `[` too).
export function globSource(glob) {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') out += '.*';
    else if (c === '?') out += '.';
    else if (c === '[' && glob.indexOf(']', i + 2) > i) {
      const end = glob.indexOf(']', i + 2);
      let cls = glob.slice(i + 1, end);
      const neg = cls[0] === '!' || cls[0] === '^';
      if (neg) cls = cls.slice(1);
      out += `[${neg ? '^' : ''}${cls.replace(/[\\\]^]/g, '\\$&')}]`;
      i = end;
    } else out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return out;
}

// A block's value from its tensors' values (`values[i]` for i in members): their max or their
// median, NaN and missing values left out (Infinity kept: a blown-up tensor is the block's max).
// null when no member has a value.
export function aggregate(values, members, how) {
  const v = [];
  for (const i of members) {
    const x = values[i];
    if (typeof x === 'number' && !Number.isNaN(x)) v.push(x);
  }
  if (!v.length) return null;
  if (how === 'max') return v.reduce((a, b) => (b > a ? b : a), -Infinity);
  v.sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

// The rows a per-layer view draws, from a run's tensor names (forward order):
//   keep(i): the views' own rule (weights only, the layer a run diverged in);
//   filter: the person's filter text (layerMatcher);
//   agg: 'none' (a row per tensor) or 'max'/'median' (a row per block of several tensors, with
//     the blocks in `open` followed by their tensors);
//   max: blocks wanted at most (MAX_BLOCKS).
// Returns {rows: [{label, members, block, kind: 'tensor'|'block', open}], starts: [{label, row}]}:
// `label` is unique (a block's starts with ▸ or ▾, which no tensor name does); `starts` names the
// first row of each block, for the axis labels of a view that shows every tensor.
export function layerRows(names, { keep = () => true, filter = '', agg = 'none', open = [], max = MAX_BLOCKS } = {}) {
  const match = layerMatcher(filter);
  const kept = [];
  for (let i = 0; i < names.length; i++) if (keep(i) && (!match || match(names[i]))) kept.push(i);
  const blocks = blocksOf(kept.map(i => names[i]), max);
  const openSet = new Set(open);
  const rows = [], starts = [];
  for (const b of blocks) {
    const members = b.members.map(k => kept[k]);
    starts.push({ label: b.key, row: rows.length });
    const tensors = members.map(i => ({ label: names[i], members: [i], block: b.key, kind: 'tensor', open: false }));
    if (agg === 'none' || members.length === 1) { rows.push(...tensors); continue; }
    const isOpen = openSet.has(b.key);
    rows.push({ label: `${isOpen ? '▾' : '▸'} ${b.key} (${agg} of ${members.length})`, members, block: b.key, kind: 'block', open: isOpen });
    if (isOpen) rows.push(...tensors);
  }
  return { rows, starts };
}

// A row's value: a tensor's own, or its block's aggregate.
export function rowValue(row, values, agg) {
  if (row.kind === 'tensor') {
    const x = values[row.members[0]];
    return typeof x === 'number' ? x : null;
  }
  return aggregate(values, row.members, agg);
}

// More rows than can be labelled (every tensor of a deep net): label the first row of each
// block with the block (`layer3.4`), the hover still names every row.
export const LABEL_ROWS = 40;
export function blockTicks(axis, rows, starts) {
  if (rows.length <= LABEL_ROWS || starts.length >= rows.length) return;
  axis.tickmode = 'array';
  axis.tickvals = starts.map(s => rows[s.row].label);
  axis.ticktext = starts.map(s => s.label);
}

// `open` with `block` opened or closed (a click on a block row, or on an opened block's tensor).
export function toggleOpen(open, block) {
  return open.includes(block) ? open.filter(b => b !== block) : [...open, block];
}
