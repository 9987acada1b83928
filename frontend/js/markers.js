// What happened to a run, as markers on its charts: live changes
// (interventions), gradient alerts and divergence, each at its step. Builds
// the Plotly layout shapes and annotations that draw them; no DOM.

const MAX_ALERT_MARKS = 40; // per run and chart: more are merged into fewer, never dropped

// A number as a short label: 0.5, 0.01, 1e-4.
export function short(v) {
  if (v == null) return '?';
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  if (n !== 0 && (Math.abs(n) < 1e-3 || Math.abs(n) >= 1e5)) return n.toExponential(0);
  return String(+n.toPrecision(3));
}

// The label of an intervention, e.g. "l2 0→0.5".
export const interventionLabel = e => `${e.field} ${short(e.old)}→${short(e.new)}`;

// [{step, kind: 'intervention' | 'alert' | 'diverged', label, hover, layer}] of one run.
// `run` is its record (status and summary say where it diverged), `series` its buffers.
export function runMarks(series, run) {
  const marks = [];
  for (const e of series?.interventions ?? []) {
    if (e.step == null) continue;
    marks.push({ step: e.step, kind: 'intervention', label: interventionLabel(e),
      hover: `step ${e.step}: ${e.field} ${e.old} → ${e.new}` + (e.source ? ` (by ${e.source})` : '') });
  }
  marks.push(...mergeAlerts(series?.alerts ?? [], run?.config?.steps));
  const s = run?.summary ?? series?.finished?.summary ?? {};
  if ((run?.status === 'diverged' || series?.finished?.status === 'diverged') && s.diverged_step != null) {
    // diverged_layer: the layer whose gradient first departed from its own baseline (the origin).
    const where = s.diverged_layer ? ` in ${s.diverged_layer}` : '';
    const since = s.diverged_since != null && s.diverged_since < s.diverged_step ? `, departing since step ${s.diverged_since}` : '';
    marks.push({ step: s.diverged_step, kind: 'diverged', label: `diverged${where}`, layer: s.diverged_layer ?? null,
      hover: `diverged at step ${s.diverged_step}${where}${since}` });
  }
  return marks;
}

// Every alert gets a marker, merged where they are dense: alerts closer than
// 1% of the run's steps become one marker ("⚠×5", at the first), and while that
// leaves more than MAX_ALERT_MARKS the gap doubles. None is ever left out.
function mergeAlerts(alerts, steps) {
  if (!alerts.length) return [];
  const sorted = [...alerts].sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
  let gap = Math.max(1, (steps || sorted[sorted.length - 1].step || 100) / 100);
  let out = merge(sorted, gap);
  while (out.length > MAX_ALERT_MARKS) out = merge(sorted, (gap *= 2));
  return out.map(m => ({
    step: m.step, kind: 'alert', count: m.count,
    label: m.count > 1 ? `⚠×${m.count}` : '⚠',
    hover: m.count > 1 ? `${m.count} alerts, steps ${m.step}–${m.last}; first: ${m.message}` : `step ${m.step}: ${m.message}`,
  }));
}

function merge(alerts, gap) {
  const out = [];
  for (const a of alerts) {
    const prev = out[out.length - 1];
    if (prev && a.step - prev.last <= gap) {
      prev.count++;
      prev.last = a.step;
      continue;
    }
    out.push({ step: a.step, last: a.step, count: 1, message: a.message ?? a.kind ?? 'alert' });
  }
  return out;
}

const STYLE = {
  intervention: { dash: 'dash', width: 1.5 },
  alert: { dash: 'dot', width: 1 },
  diverged: { dash: 'solid', width: 2 },
};
const BAD = '#cf222e';

// Shapes and annotations for marks of one run on one x axis.
//   color: the run's color; xref/yref: Plotly references ('x', 'paper' or 'x2', 'y2 domain');
//   slot: the first free label row (labels of several runs stack downwards);
//   small: short labels only (the small multiples).
export function markLayout(marks, color, { xref = 'x', yref = 'paper', slot = 0, small = false, layerAxis = false } = {}) {
  const shapes = [];
  const annotations = [];
  let row = slot;
  for (const m of marks) {
    if (layerAxis && !m.layer) continue; // a layer axis shows only where it diverged
    const x = layerAxis ? m.layer : m.step;
    const style = STYLE[m.kind];
    const lineColor = m.kind === 'diverged' ? BAD : color;
    const alert = m.kind === 'alert';
    shapes.push({
      type: 'line', xref, yref, x0: x, x1: x, y0: alert ? 0.9 : 0, y1: 1,
      line: { color: lineColor, width: style.width, dash: style.dash }, name: `${m.kind} ${m.label}`,
      layer: 'above',
    });
    // Alerts are a short tick only: they can be many, and every text label costs a
    // measurement on each redraw. Their messages are in the details panel and on
    // the scrubber's ticks.
    if (alert) continue;
    const label = small && m.kind === 'intervention' ? m.label.replace(/ /, '\u202f') : m.label;
    annotations.push({
      x, xref, yref, y: 1 - 0.1 * (row++ % 5), yanchor: 'top', xanchor: 'left', xshift: 2,
      text: label, hovertext: m.hover, showarrow: false,
      font: { size: small ? 9 : 10, color: m.kind === 'diverged' ? BAD : color },
      bgcolor: 'rgba(255,255,255,0.85)', borderpad: 1,
      name: m.kind,
    });
  }
  return { shapes, annotations, slot: row };
}

// A thin grey line at the step the layer profiles show (when scrubbed back).
export function stepLine(step, { xref = 'x', yref = 'paper' } = {}) {
  if (step == null) return [];
  return [{ type: 'line', xref, yref, x0: step, x1: step, y0: 0, y1: 1, name: 'profile step',
    line: { color: '#8b949e', width: 1, dash: 'dot' }, layer: 'below' }];
}
