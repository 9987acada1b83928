// Run colors: one per run, the same in the runs list, every chart, the chips and
// the group view. Derived from the run ids and the selection; no DOM.

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

// How far apart two colors look (the "redmean" weighted RGB distance: cheap,
// and close enough to perception to tell pink from purple).
export function distance(a, b) {
  const [r1, g1, b1] = rgb(a), [r2, g2, b2] = rgb(b);
  const r = (r1 + r2) / 2;
  return Math.sqrt((2 + r / 256) * (r1 - r2) ** 2 + 4 * (g1 - g2) ** 2 + (2 + (255 - r) / 256) * (b1 - b2) ** 2);
}
const rgb = hex => [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
const NEAR = 150; // closer than this reads as "the same run" on a busy chart

// One color per run id, kept across views. A run's first color is its id's
// hash's palette slot. Shown runs must be told apart, so when a run joins the
// shown ones and its color is taken, or (the first time it is colored) looks
// too like one taken, it gets the free slot farthest from every color in use.
// Whatever a run got is remembered (`ColorBook`): a run already shown is never
// recolored by another joining it, and the same run has the same color in
// every selection the person makes. Unshown runs show their remembered or
// hash color.
export class ColorBook {
  // saved: [[run id, color]] from an earlier page (oldest first).
  constructor(saved = [], limit = 500) {
    this.colors = new Map(saved.filter(([id, c]) => typeof id === 'string' && PALETTE.includes(c)));
    this.shown = [];     // the ids shown by the last assign(), in their order
    this.limit = limit;  // ids remembered at most (the oldest are forgotten)
  }

  // runs: records ({id, created}); selected: the shown ids. Returns a Map run id -> color for
  // every run and every selected id, and remembers the selected runs' colors.
  assign(runs, selected) {
    const created = new Map(runs.map(r => [r.id, r.created ?? 0]));
    const before = new Set(this.shown);
    const chosen = new Set(selected);
    // Runs already shown keep theirs first (in their order); the rest, oldest first.
    const order = [...this.shown.filter(id => chosen.has(id)),
      ...selected.filter(id => !before.has(id)).sort((a, b) => (created.get(a) ?? Infinity) - (created.get(b) ?? Infinity))];
    const used = [];
    const nearest = c => Math.min(Infinity, ...used.map(u => distance(c, u)));
    const colors = new Map();
    for (const id of order) {
      const known = this.colors.get(id);
      let color = known ?? hashColor(id);
      const clash = known ? used.includes(color) : nearest(color) < NEAR;
      if (clash && used.length < PALETTE.length) {
        const free = PALETTE.filter(c => !used.includes(c));
        color = free.reduce((best, c) => (nearest(c) > nearest(best) ? c : best), free[0]);
      }
      used.push(color);
      colors.set(id, color);
      this.remember(id, color);
    }
    this.shown = order;
    for (const run of runs) if (!colors.has(run.id)) colors.set(run.id, this.colors.get(run.id) ?? hashColor(run.id));
    return colors;
  }

  remember(id, color) {
    if (this.colors.get(id) === color) return;
    this.colors.delete(id); // (re)inserted last: the newest
    this.colors.set(id, color);
    this.changed = true;
    while (this.colors.size > this.limit) this.colors.delete(this.colors.keys().next().value);
  }

  forget(id) { this.changed = this.colors.delete(id) || this.changed; }

  saved() { return [...this.colors]; }
}

// The colors of one view, from nothing remembered: the selected runs, oldest
// first, each its hash color unless taken (see ColorBook).
export function assignColors(runs, selected) {
  return new ColorBook().assign(runs, selected);
}

// The color of a run not (yet) in the runs list, e.g. one named in the URL.
export function hashColor(id) {
  return PALETTE[hash(id) % PALETTE.length];
}
