// What the page concludes about a run, each rule stated once (docs/usage.md
// "Reading the diagnosis" quotes them): "not learning", an early blow-up and
// the steps around it, when a y axis goes log by itself, and a run's alert
// episodes. Pure functions of run records, events and numbers; no DOM.

// A finished run whose final validation accuracy is within this much of chance.
export const CHANCE_MARGIN = 0.05;
// A blow-up in the first fifth of the planned steps is "early": the step charts show the steps around it.
export const EARLY = 0.2;
// Steps shown before the departure began, and after the non-finite step.
const BEFORE = 5, AFTER = 2;
// A y range wider than this many decades goes log by itself.
export const LOG_DECADES = 3;

const ENDED_OK = new Set(['completed', 'stopped']);

// "Not learning": a run that ended (completed or stopped, not diverged) whose
// last validation accuracy is within CHANCE_MARGIN of chance (1 / n_classes).
// null when that is not so, or cannot be said (no validation, no class count:
// own-loop runs). Else {val, chance}.
export function notLearning(run) {
  const s = run?.summary ?? {};
  if (!ENDED_OK.has(run?.status) || s.diverged_step != null) return null;
  const val = s.val_accuracy, n = s.n_classes;
  if (!Number.isFinite(val) || !Number.isInteger(n) || n < 2) return null;
  const chance = 1 / n;
  return Math.abs(val - chance) <= CHANCE_MARGIN ? { val, chance } : null;
}

// An early blow-up: a diverged run whose non-finite step came within the
// first EARLY of its planned steps. {since, step, from, to}: where the
// departure began (summary.diverged_since, else the non-finite step), and the
// steps to show around it. null otherwise.
export function earlyBlowUp(run) {
  const s = run?.summary ?? {};
  const step = s.diverged_step;
  const planned = run?.config?.steps;
  if (run?.status !== 'diverged' || !Number.isFinite(step) || !(planned > 0) || step > EARLY * planned) return null;
  const since = Number.isFinite(s.diverged_since) ? Math.min(s.diverged_since, step) : step;
  return { since, step, from: Math.max(0, since - BEFORE), to: step + AFTER };
}

// The steps to show for a set of runs when the person has not chosen: the
// span around every early blow-up among them, or null (all steps).
export function blowUpRange(runs) {
  let from = Infinity, to = -Infinity;
  for (const run of runs) {
    const b = earlyBlowUp(run);
    if (b) { from = Math.min(from, b.from); to = Math.max(to, b.to); }
  }
  return from < to ? [from, to] : null;
}

// Whether a y axis left on "auto" is drawn log: when its runs' values span
// more than LOG_DECADES decades (lo: the smallest positive value, hi: the
// largest), or any of them diverged. {log, why}; why says it in words.
export function autoLog(lo, hi, diverged) {
  if (diverged) return { log: true, why: 'a run diverged' };
  if (lo > 0 && hi > 0 && Number.isFinite(lo) && Number.isFinite(hi)) {
    const decades = Math.log10(hi / lo);
    if (decades > LOG_DECADES) return { log: true, why: `values span ${decades.toFixed(1)} decades` };
  }
  return { log: false, why: '' };
}

// A run's alerts as episodes, the first first: each alert event opens one, and
// its alert.end (same episode number) gives the peak. Alerts without an
// episode number (older runs' "explosion" alerts) are an episode each.
//   [{episode, step, kind, message, layer, value, baseline, ratio, top: [{layer, ratio}],
//     end: {step, peak_step, peak_value, peak_ratio} | null}]
export function alertEpisodes(alerts, ends = []) {
  const endOf = new Map(ends.filter(e => e.episode != null).map(e => [e.episode, e]));
  return alerts
    .map((a, i) => ({
      episode: a.episode ?? null, step: a.step, kind: a.kind ?? 'alert', message: a.message ?? a.kind ?? 'alert',
      layer: a.layer ?? null, value: a.value, baseline: a.baseline ?? a.median, ratio: a.ratio,
      top: Array.isArray(a.top) ? a.top : [], end: (a.episode != null && endOf.get(a.episode)) || null, order: i,
    }))
    .sort((a, b) => (a.step ?? 0) - (b.step ?? 0) || a.order - b.order);
}
