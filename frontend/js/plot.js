/* global Plotly */
// What every Plotly figure of the page shares: the look (layout), the config,
// trace ids, value helpers and the PNG download.

export const CONFIG = {
  // A double-click shows everything (all steps: the linked charts follow), never a half-way "reset".
  responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'], doubleClick: 'autosize',
};
export const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

// The page's colors for a figure (styles.css: light, or dark from prefers-color-scheme),
// read when a layout is made; outside a page (node tests) the light ones.
export function themeColors() {
  const css = globalThis.document && globalThis.getComputedStyle?.(document.documentElement);
  const v = (name, light) => css?.getPropertyValue(name).trim() || light;
  return { paper: v('--card', '#fff'), ink: v('--ink', '#1f2328'), grid: v('--grid', '#eceff3') };
}

// The same colors as a relayout, for figures drawn before the scheme changed.
export function themeRelayout() {
  const t = themeColors();
  return { 'font.color': t.ink, paper_bgcolor: t.paper, plot_bgcolor: t.paper, 'xaxis.gridcolor': t.grid, 'yaxis.gridcolor': t.grid };
}
export const NO_RUNS = 'select a run in the list to plot it';

// `empty`: a message to show instead of axes, or false.
export function layout({ xtitle = 'step', ytitle, log = false, empty = false, uirevision = 'keep' }) {
  const theme = themeColors();
  return {
    uirevision,
    font: { family: FONT, size: 11, color: theme.ink },
    paper_bgcolor: theme.paper,
    plot_bgcolor: theme.paper,
    margin: { l: 58, r: 14, t: 10, b: 44 },
    hovermode: 'closest',
    showlegend: true,
    legend: { orientation: 'h', x: 0, y: 1.02, yanchor: 'bottom', font: { size: 11 } },
    xaxis: { title: { text: xtitle }, gridcolor: theme.grid, zeroline: false, automargin: true, visible: !empty },
    yaxis: {
      // A new axis type starts from its own autorange, not the other type's zoom.
      title: { text: ytitle }, type: log ? 'log' : 'linear', uirevision: log ? 'log' : 'linear', gridcolor: theme.grid,
      zeroline: false, automargin: true, exponentformat: 'power', visible: !empty,
      // Fewer ticks than Plotly's default: on a log axis spanning about a
      // decade it otherwise labels every digit 2..9 and they overlap (4 gives 2, 5, 10).
      nticks: log ? 4 : 0,
    },
    shapes: [],
    annotations: empty ? [emptyNote(empty)] : [],
  };
}

// The steps an x axis shows: `range` [a, b], or null for all of them. Its
// uirevision is the range itself, so a new range (another chart zoomed, the
// blow-up focus, "all steps") replaces what the person dragged before, and
// the same range keeps it.
export function setX(axis, range) {
  axis.autorange = !range;
  if (range) axis.range = [...range];
  else delete axis.range;
  axis.uirevision = range ? range.join(',') : 'all';
  return axis;
}

// Relayout of `div`'s x axis to `range` (null: all), unless it shows that already
// (the chart the person zoomed).
export function relayoutX(div, range) {
  const ax = div._fullLayout?.xaxis;
  if (ax && (range ? !ax.autorange && near(ax.range, range) : ax.autorange)) return;
  Plotly.relayout(div, range
    ? { 'xaxis.range': [...range], 'xaxis.autorange': false, 'xaxis.uirevision': range.join(',') }
    : { 'xaxis.autorange': true, 'xaxis.uirevision': 'all' });
}

// The x range a plotly_relayout event sets: [a, b], 'full' (autorange: a
// double-click), or undefined (it changed something else). Any x axis of the
// figure counts (the small multiples' panels share theirs).
export function xOfRelayout(ev) {
  let a, b;
  for (const [k, v] of Object.entries(ev ?? {})) {
    if (/^xaxis\d*\.autorange$/.test(k) && v === true) return 'full';
    if (/^xaxis\d*\.range\[0\]$/.test(k)) a = v;
    else if (/^xaxis\d*\.range\[1\]$/.test(k)) b = v;
    else if (/^xaxis\d*\.range$/.test(k) && Array.isArray(v)) [a, b] = v;
  }
  a = Number(a); b = Number(b);
  if (!Number.isFinite(a) || !Number.isFinite(b) || a === b) return undefined;
  return a < b ? [a, b] : [b, a];
}

// Two ranges the same to a millionth of their span.
export function near(r, s) {
  if (!Array.isArray(r) || !Array.isArray(s)) return false;
  const tol = 1e-6 * Math.max(1e-9, Math.abs(s[1] - s[0]));
  return Math.abs(r[0] - s[0]) <= tol && Math.abs(r[1] - s[1]) <= tol;
}

export function emptyNote(text) {
  return { text, showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: { color: '#8b949e', size: 13 } };
}

// The widest of `labels` drawn in `font` ({family, size}), in CSS pixels: a canvas measures the
// text as the SVG draws it. null outside a page (node tests).
let measurer = null;
export function labelWidth(labels, font) {
  if (!globalThis.document) return null;
  measurer ??= document.createElement('canvas').getContext('2d');
  measurer.font = `${font.size}px ${font.family}`;
  let w = 0;
  for (const t of labels) w = Math.max(w, measurer.measureText(String(t)).width);
  return Math.ceil(w);
}

// A log axis cannot show 0 or negatives; they become gaps like non-finite values.
export const positive = v => (v > 0 && Number.isFinite(v) ? v : null);
export const log10 = v => (v > 0 && Number.isFinite(v) ? Math.log10(v) : null);

// A trace's `uid` ties it to its person-made state (hidden, ...) across
// react(). Plotly also uses it in CSS selectors, so: a letter first, no colons.
export const uid = (runId, kind) => `t-${runId.replace(/[^\w-]/g, '_')}-${kind}`;

// Merge the runs' layer-name lists into one order that keeps each run's
// forward order: runs with and without BatchNorm have different parameter
// lists, and a shared name (the same Linear) lines up at the same x.
export function mergeOrder(lists) {
  const out = [];
  const at = new Map();
  for (const names of lists) {
    let cursor = 0;
    for (const name of names) {
      if (at.has(name)) { cursor = out.indexOf(name) + 1; continue; }
      out.splice(cursor++, 0, name);
      at.set(name, true);
    }
  }
  return out;
}

// Save a figure as PNG, at its size on screen (twice the pixels, for sharpness).
export function downloadPng(div, name) {
  return Plotly.downloadImage(div, {
    format: 'png', filename: `gradwatch-${name}`,
    width: div.clientWidth || 800, height: div.clientHeight || 400, scale: 2,
  });
}
