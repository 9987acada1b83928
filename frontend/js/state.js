// UI state, declared once, and mirrored in the page URL (TensorFlow Playground's
// state.ts): a comparison of runs is a link someone can share, and a reload
// restores it. No DOM here: only the URL (location/history) is touched.

// Every piece of UI state and its URL key. Adding a field means adding it here.
const FIELDS = {
  selected: { key: 'runs', parse: s => s.split(',').filter(Boolean), format: a => a.join(',') },
  focus: { key: 'focus', parse: s => s || null, format: v => v || '' },
  heatmap: { key: 'heatmap', parse: s => s || null, format: v => v || '' },
};

// Parse a query string into state. `explicit.selected` tells whether the URL
// named a selection at all (an empty `runs=` means "none", a missing one means
// "pick something sensible").
export function parseState(search) {
  const params = new URLSearchParams(search);
  const state = { selected: [], focus: null, heatmap: null };
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
  for (const [field, { key, format }] of Object.entries(FIELDS)) {
    const value = format(state[field]);
    // `runs=` is kept even when empty: it means "nothing selected" on reload.
    if (value || field === 'selected') params.set(key, value);
    else params.delete(key);
  }
  // URLSearchParams escapes the commas of `runs=a,b`; they are safe in a query
  // and the link stays readable without them escaped.
  return '?' + params.toString().replace(/%2C/gi, ',');
}

// The store: get(), set(patch), subscribe(fn). set() replaces the URL (no new
// history entry per checkbox click) and tells subscribers what changed.
export function createState(win = globalThis) {
  const parsed = parseState(win.location.search);
  let state = parsed.state;
  const listeners = [];
  return {
    explicit: parsed.explicit,
    get: () => state,
    set(patch) {
      const next = { ...state, ...patch };
      const changed = Object.keys(patch).filter(k => !same(state[k], next[k]));
      if (!changed.length) return;
      state = next;
      const search = formatState(state, win.location.search);
      if (search !== win.location.search) {
        win.history.replaceState(null, '', win.location.pathname + search + win.location.hash);
      }
      for (const fn of listeners) fn(state, changed);
    },
    subscribe: fn => listeners.push(fn),
  };
}

function same(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((v, i) => v === b[i]);
  return a === b;
}

// ---- run colors: derived from state, shared by the runs list and every chart.

// Tableau 10 with its pale yellow and pink and its grey (which reads as
// "disabled") swapped for darker hues: every line must stand out on white.
export const PALETTE = [
  '#4e79a7', '#e15759', '#59a14f', '#f28e2b', '#b07aa1',
  '#499894', '#b6992d', '#9c755f', '#d37295', '#5b4fcf',
];

function hash(id) {
  let h = 2166136261; // FNV-1a: cheap, and spreads short hex ids well
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619);
  return h >>> 0;
}

// One color per run id, stable across reloads: the id's hash picks a palette
// slot. Two selected runs must not share a color, so among the selected runs
// (oldest first, so an older run keeps its color) a clash moves the newer run
// to the next free slot. Unselected runs just show their hash color.
export function assignColors(runs, selected) {
  const colors = new Map();
  const chosen = new Set(selected);
  const used = new Set();
  const ordered = runs.filter(r => chosen.has(r.id)).sort((a, b) => (a.created ?? 0) - (b.created ?? 0));
  for (const run of ordered) {
    let slot = hash(run.id) % PALETTE.length;
    for (let k = 0; k < PALETTE.length && used.has(slot); k++) slot = (slot + 1) % PALETTE.length;
    used.add(slot);
    colors.set(run.id, PALETTE[slot]);
  }
  for (const run of runs) if (!colors.has(run.id)) colors.set(run.id, hashColor(run.id));
  return colors;
}

// The color of a run not (yet) in the runs list, e.g. one named in the URL.
export function hashColor(id) {
  return PALETTE[hash(id) % PALETTE.length];
}
