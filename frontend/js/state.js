// UI state, declared once, and mirrored in the page URL (TensorFlow Playground's
// state.ts): a comparison of runs is a link someone can share, and a reload
// restores it. No DOM here: only the URL (location/history) is touched.

import { isHeatmapStat, statsServed } from './stats.js';

const list = { parse: s => s.split(',').filter(Boolean), format: a => a.join(',') };
const id = { parse: s => s || null, format: v => v || '' };

// Every piece of UI state, its URL key and its default (a default is left out
// of the URL). Adding a field means adding it here.
const FIELDS = {
  selected: { key: 'runs', ...list, default: [] },   // runs drawn on the charts
  focus: { key: 'focus', ...id, default: null },     // the run of the details panel
  group: { key: 'group', ...id, default: null },     // the ablation group shown
  heatmap: { key: 'heatmap', ...id, default: null }, // run of the heatmap (null: follow the focus)
  stat: {                                            // the heatmap's statistic: one stats.js offers
    key: 'stat', default: 'grad_norm',               // (before its list came, any name: main.js checks it then)
    parse: s => ((statsServed() ? isHeatmapStat(s) : /^[a-z0-9_]{1,64}$/.test(s)) ? s : 'grad_norm'),
    format: v => v,
  },
  step: {                                            // layer profiles at this step (null: the latest)
    key: 'step', default: null,
    parse: s => (/^\d+$/.test(s) ? Number(s) : null),
    format: v => (v == null ? '' : String(v)),
  },
  smooth: {                                          // EMA weight of loss/accuracy, 0 = raw
    key: 'smooth', default: 0.6,
    parse: s => { const v = Number(s); return Number.isFinite(v) ? Math.min(0.99, Math.max(0, v)) : 0.6; },
    format: v => String(v),
  },
  layers: {                                          // layer profiles and heatmap: weights only, or every parameter
    key: 'layers', default: 'weights',
    parse: s => (s === 'all' ? 'all' : 'weights'),
    format: v => v,
  },
  filter: {                                          // layer profiles and heatmap: which tensors (layers.js layerMatcher)
    key: 'filter', default: '',
    parse: s => s.slice(0, 200),
    format: v => v,
  },
  agg: {                                             // layer profiles and heatmap: a row per block (its max or median)
    key: 'agg', default: 'none',
    parse: s => (s === 'max' || s === 'median' ? s : 'none'),
    format: v => v,
  },
  open: { key: 'open', ...list, default: [] },       // blocks shown with their tensors under the block's row
  relative: {                                        // heatmap: each layer divided by its own first steps
    key: 'relative', default: false,
    parse: s => s === '1',
    format: v => (v ? '1' : ''),
  },
  scale: {                                           // y axis of loss and global grad norm (auto: diagnosis.js)
    key: 'scale', default: 'auto',
    parse: s => (s === 'log' || s === 'linear' ? s : 'auto'),
    format: v => v,
  },
  x: {                                               // steps shown on every step chart (linked)
    key: 'x', default: null,                         // null: auto (around an early blow-up, else all)
    parse: parseRange,                               // 'full': all of them; [a, b]: the person's zoom
    format: v => (v == null ? '' : v === 'full' ? 'full' : v.map(n => +n.toPrecision(6)).join(',')),
  },
};

// "12.5,40" -> [12.5, 40]; "full" -> 'full'; anything else -> null (auto).
function parseRange(s) {
  if (s === 'full') return 'full';
  const v = s.split(',').map(Number);
  return v.length === 2 && v.every(Number.isFinite) && v[0] < v[1] ? v : null;
}

export const DEFAULTS = Object.fromEntries(Object.entries(FIELDS).map(([k, f]) => [k, f.default]));

// Parse a query string into state. `explicit.selected` tells whether the URL
// named a selection at all (an empty `runs=` means "none", a missing one means
// "pick something sensible").
export function parseState(search) {
  const params = new URLSearchParams(search);
  const state = { ...DEFAULTS };
  const explicit = {};
  for (const [field, { key, parse }] of Object.entries(FIELDS)) {
    explicit[field] = params.has(key);
    if (params.has(key)) state[field] = parse(params.get(key));
  }
  return { state, explicit };
}

// Write state into a query string, keeping parameters that are not UI state
// (the access `token` in particular) untouched.
export function formatState(state, search) {
  const params = new URLSearchParams(search);
  for (const [field, { key, format, default: dflt }] of Object.entries(FIELDS)) {
    const value = format(state[field]);
    // `runs=` is kept even when empty: it means "nothing selected" on reload.
    if (field === 'selected' || (value !== '' && !same(state[field], dflt))) params.set(key, value);
    else params.delete(key);
  }
  // URLSearchParams escapes the commas of `runs=a,b`; they are safe in a query
  // and the link stays readable without them escaped.
  return '?' + params.toString().replace(/%2C/gi, ',');
}

// The store: get(), set(patch), subscribe(fn). set() tells subscribers and
// replaces the URL at once, except in a burst (dragging a slider), where the
// URL is written at most every `urlEveryMs`, the last value always: browsers
// throttle history.replaceState called a hundred times a second. No history
// entry per click either.
export function createState(win = globalThis, urlEveryMs = 100) {
  const parsed = parseState(win.location.search);
  let state = parsed.state;
  let timer = null;
  let written = -Infinity;
  const listeners = [];
  const writeUrl = () => {
    timer = null;
    written = performance.now();
    const search = formatState(state, win.location.search);
    if (search !== win.location.search) {
      win.history.replaceState(null, '', win.location.pathname + search + win.location.hash);
    }
  };
  const scheduleUrl = () => {
    if (timer) return;
    const wait = written + urlEveryMs - performance.now();
    if (wait <= 0) writeUrl();
    else timer = setTimeout(writeUrl, wait);
  };
  return {
    explicit: parsed.explicit,
    get: () => state,
    set(patch) {
      const next = { ...state, ...patch };
      const changed = Object.keys(patch).filter(k => !same(state[k], next[k]));
      if (!changed.length) return;
      state = next;
      scheduleUrl();
      for (const fn of listeners) fn(state, changed);
    },
    flush() { if (timer) { clearTimeout(timer); writeUrl(); } },
    subscribe: fn => listeners.push(fn),
  };
}

function same(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((v, i) => v === b[i]);
  return a === b;
}
