// The per-layer statistics as the server defines them, once (gradwatch.stats, served by
// GET /api/stats): each one's name, cadence, what it is per, titles, log or linear, whether the
// heatmap offers it, and the line chart taken over its layers. Filled from the server before the
// runs are first drawn (main.js awaits loadStats), so a statistic added there needs no edit here.
// No DOM.

export const STATS = [];
const byName = new Map();
let served = false;
let markReady;
// Settles once loadStats has run (whether the server answered or not).
export const statsReady = new Promise(resolve => { markReady = resolve; });

export async function loadStats(api) {
  try {
    const list = await api.stats();
    STATS.splice(0, STATS.length, ...list);
    byName.clear();
    for (const s of list) byName.set(s.name, s);
    served = true;
  } finally {
    markReady();
  }
  return STATS;
}

export const statOf = name => byName.get(name) ?? null;
export const statsServed = () => served;
// The heatmap's menu, in the registry's order.
export const heatmapStats = () => STATS.filter(s => s.heatmap);
export const isHeatmapStat = name => Boolean(statOf(name)?.heatmap);
// A colour bar's title, and an axis's (a formula where the registry gives one).
export const titleOf = name => statOf(name)?.title ?? name;
export const axisOf = name => statOf(name)?.axis || titleOf(name);
// Drawn as it is (a fraction, 0 included) rather than on a log scale.
export const isLinear = name => statOf(name)?.scale === 'linear';
// The every-stats_every-steps statistics the line charts draw: what the page asks /metrics for;
// null before the list came (or if it could not): ask for them all.
export const lineStats = () => (served ? STATS.filter(s => s.line && s.cadence === 'stats').map(s => s.name) : null);
