/* global Plotly */
// What every Plotly figure of the page shares: the look (layout), the config,
// trace ids, value helpers and the PNG download.

export const CONFIG = {
  responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'],
};
export const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const GRID = '#eceff3';
export const NO_RUNS = 'select a run in the list to plot it';

// `empty`: a message to show instead of axes, or false.
export function layout({ xtitle = 'step', ytitle, log = false, empty = false, uirevision = 'keep' }) {
  return {
    uirevision,
    font: { family: FONT, size: 11, color: '#1f2328' },
    paper_bgcolor: '#fff',
    plot_bgcolor: '#fff',
    margin: { l: 58, r: 14, t: 10, b: 44 },
    hovermode: 'closest',
    showlegend: true,
    legend: { orientation: 'h', x: 0, y: 1.02, yanchor: 'bottom', font: { size: 11 } },
    xaxis: { title: { text: xtitle }, gridcolor: GRID, zeroline: false, automargin: true, visible: !empty },
    yaxis: {
      title: { text: ytitle }, type: log ? 'log' : 'linear', gridcolor: GRID,
      zeroline: false, automargin: true, exponentformat: 'power', visible: !empty,
      // Fewer ticks than Plotly's default: on a log axis spanning about a
      // decade it otherwise labels every digit 2..9 and they overlap (4 gives 2, 5, 10).
      nticks: log ? 4 : 0,
    },
    shapes: [],
    annotations: empty ? [emptyNote(empty)] : [],
  };
}

export function emptyNote(text) {
  return { text, showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: { color: '#8b949e', size: 13 } };
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
