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

// One color per run id, stable across reloads: the id's hash picks a palette
// slot. Selected runs must be told apart, so among them (oldest first, so an
// older run keeps its color) a run whose hash color is taken, or looks too
// like one taken, gets the free slot farthest from every color in use.
// Unselected runs just show their hash color.
export function assignColors(runs, selected) {
  const colors = new Map();
  const chosen = new Set(selected);
  const used = [];
  const ordered = runs.filter(r => chosen.has(r.id)).sort((a, b) => (a.created ?? 0) - (b.created ?? 0));
  const nearest = c => Math.min(Infinity, ...used.map(u => distance(c, u)));
  for (const run of ordered) {
    let color = hashColor(run.id);
    if (used.length < PALETTE.length && nearest(color) < NEAR) {
      const free = PALETTE.filter(c => !used.includes(c));
      color = free.reduce((best, c) => (nearest(c) > nearest(best) ? c : best), free[0]);
    } else if (used.includes(color)) {
      color = PALETTE[(PALETTE.indexOf(color) + used.length) % PALETTE.length]; // more runs than colors
    }
    used.push(color);
    colors.set(run.id, color);
  }
  for (const run of runs) if (!colors.has(run.id)) colors.set(run.id, hashColor(run.id));
  return colors;
}

// The color of a run not (yet) in the runs list, e.g. one named in the URL.
export function hashColor(id) {
  return PALETTE[hash(id) % PALETTE.length];
}
