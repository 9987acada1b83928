/* global Plotly */
// Layer x step heatmap of one run, from the server's min/max buckets
// (GET /api/runs/{id}/heatmap): each column is a span of steps colored by its
// maximum, so a one-step spike keeps its full value at any zoom. Refetched
// when the run or statistic changes, and
// every REFRESH_MS while the run grows.

import { CONFIG, NO_RUNS, labelWidth, layout, relayoutX, setX } from './plot.js';
import { markLayout } from './markers.js';
import { isLinear, statOf, titleOf } from './stats.js';
import { isWeight } from './profiles.js';
import { aggregate, blockTicks, layerRows } from './layers.js';

const REFRESH_MS = 2000;
// "Relative": each layer divided by the median of its first BASE_COLUMNS columns.
export const BASE_COLUMNS = 5;
const ZERO = '#d0d7de';
// The left margin past the widest row label: what automargin gave, measured in Chromium (125 px
// for labels 95 px wide, 59 for 29); the labels themselves need about 9 (test_browser_layers.py).
const LABEL_GAP = 30;

export class HeatmapFigure {
  // onData(): a fetch landed and the figure wants drawing.
  constructor(div, api, onData) {
    this.div = div;
    this.api = api;
    this.onData = onData;
    this.want = null;      // {id, stat} asked for
    this.body = null;      // the last answer, for `have`
    this.have = null;      // {id, stat, step} the answer is for
    this.fetching = false;
    this.fetchedAt = 0;
    this.key = null;
    this.xKey = null;
    this.failed = null;
    Plotly.newPlot(div, [], layout({ ytitle: '', empty: NO_RUNS }), CONFIG);
  }

  // Buckets about two pixels wide.
  maxPoints() {
    return Math.max(50, Math.min(1000, Math.floor((this.div.clientWidth || 800) / 2)));
  }

  needsFetch(run, stat) {
    if (!run) return false;
    const h = this.have;
    if (!h || h.id !== run.id || h.stat !== stat) return true;
    const last = run.series.lastStep();
    return last != null && last !== h.step && performance.now() - this.fetchedAt >= REFRESH_MS;
  }

  async fetch(run, stat) {
    this.fetching = true;
    const step = run.series.lastStep();
    const started = performance.now();
    try {
      const body = await this.api.heatmap(run.id, stat, this.maxPoints());
      this.body = body;
      this.have = { id: run.id, stat, step };
      this.failed = null;
    } catch (err) {
      this.failed = `could not load the heatmap: ${err.message}`;
      this.have = { id: run.id, stat, step };
    } finally {
      this.fetching = false;
      this.fetchedAt = Math.max(started, performance.now() - REFRESH_MS / 2);
      this.onData();
    }
  }

  keyNow(run, view) {
    const { stat, layers, relative, filter, agg, open } = view;
    return run ? [run.id, stat, layers, relative, filter, agg, open.join(','), run.name, run.marksKey, this.have?.step, this.have?.id, this.have?.stat,
      this.failed].join('|') : `none|${stat}`;
  }

  xStale(view) { return JSON.stringify(view.xrange ?? null) !== this.xKey; }

  // The figure is waiting for a fetch, or shows something else than asked.
  stale(runs, view) {
    const run = runs.find(r => r.id === view.heatRun) ?? null;
    return (!this.fetching && this.needsFetch(run, view.stat)) || this.keyNow(run, view) !== this.key || this.xStale(view);
  }

  // Another run, statistic or way of drawing than the one shown: the person is waiting for it.
  urgent(runs, view) {
    return this.shown !== shownKey(view) || this.xStale(view);
  }

  // How long until a refresh for steps that came since the last fetch, or null.
  dueIn(runs, view) {
    const run = runs.find(r => r.id === view.heatRun);
    const last = run?.series.lastStep();
    if (!run || last == null || this.fetching || this.have?.step === last) return null;
    return Math.max(0, this.fetchedAt + REFRESH_MS - performance.now());
  }

  draw(runs, view) {
    const run = runs.find(r => r.id === view.heatRun) ?? null;
    const { stat } = view;
    if (!this.fetching && this.needsFetch(run, stat)) this.fetch(run, stat);
    const key = this.keyNow(run, view);
    if (key === this.key) {
      if (this.xStale(view)) {
        this.xKey = JSON.stringify(view.xrange ?? null);
        relayoutX(this.div, view.xrange ?? null);
      }
      return;
    }
    const h = this.have;
    const current = run && h && h.id === run.id && h.stat === stat;
    if (run && !current) return; // keep the old picture until the new one lands
    this.key = key;
    this.xKey = JSON.stringify(view.xrange ?? null);
    this.shown = shownKey(view);
    const body = this.body;
    const rows = body?.layers ? this.rowsOf(run, body, view) : [];
    this.rows = rows;
    if (!run || this.failed || !body?.step_start?.length || !rows.length) {
      const empty = !run ? NO_RUNS : this.failed
        ?? (!body?.layers?.length && body?.step_start?.length ? `no ${titleOf(stat)} in ${run.name} (none sent)`
          : !body?.layers?.length ? `no steps recorded for ${run.name} yet`
          : view.filter ? `no layer matches "${view.filter}"` : 'no weight matrices in this run: untick "weights only"');
      Plotly.react(this.div, [], layout({ ytitle: '', empty }), CONFIG);
      return;
    }
    const relative = view.relative && !isLinear(stat);
    const { trace, zeros } = this.trace(body, stat, rows, relative, view.agg);
    Plotly.react(this.div, zeros ? [trace, zeros.trace] : [trace], this.layoutFor(run, body, view, zeros?.count ?? 0), CONFIG);
  }

  // The rows drawn (layers.js layerRows, members index body.layers): with "weights only", the
  // weight matrices (no biases, no BatchNorm γ/β), and the layer a run diverged in if it is
  // another; the activations' statistics have a row per activation, all kept. Then the
  // person's filter, and with an aggregate a row per block (opened blocks with their tensors).
  rowsOf(run, body, view) {
    const acts = (statOf(body.stat)?.per ?? 'parameter') !== 'parameter'; // a row per activation or BN: no weights to pick
    const diverged = new Set(run.marks.filter(m => m.kind === 'diverged' && m.layer).map(m => m.layer));
    const keep = view.layers !== 'weights' || acts ? () => true
      : i => isWeight(body.layers[i]) || diverged.has(body.layers[i].name);
    const { rows, starts } = layerRows(body.layers.map(l => l.name), { keep, filter: view.filter, agg: view.agg, open: view.open });
    this.starts = starts;
    return rows;
  }

  // The block a row of the drawn figure stands for (a click on it opens or closes it), or null.
  blockAt(label) {
    const row = this.rows?.find(r => r.label === label);
    return row && (row.kind === 'block' || row.members.length && this.rows.some(r => r.kind === 'block' && r.block === row.block))
      ? row.block : null;
  }

  // The heatmap trace: log10 of each bucket's max (linear for fractions); `relative`: log10 of
  // it divided by the layer's median over its first BASE_COLUMNS columns, so the layer that
  // grew stands out whatever its size. Exact zeros (no log) get a grey trace of their own.
  // A block's row (`agg`: max or median) is that of its tensors' values, and relative, that of
  // their ratios to their own starts (the tensor that grew most, or the typical one).
  trace(body, stat, rows, relative, agg) {
    const nb = body.step_start.length;
    const x = columnsX(body.step_start, body.step_end);
    const linear = isLinear(stat);
    const z = [], maxes = [], zero = [];
    let zeroCount = 0, lo = Infinity, hi = -Infinity;
    const bases = new Map();
    const baseOf = l => {
      if (!bases.has(l)) bases.set(l, baseline(body.max, l, nb));
      return bases.get(l);
    };
    for (const row of rows) {
      const zr = new Array(nb), mr = new Array(nb), zz = new Array(nb).fill(null);
      const one = row.kind === 'tensor' ? row.members[0] : -1;
      const base = relative && one >= 0 ? baseOf(one) : 1;
      for (let b = 0; b < nb; b++) {
        const col = body.max[b];
        const max = one >= 0 ? col[one] : aggregate(col, row.members, agg);
        mr[b] = max;
        if (linear) { zr[b] = max; continue; }
        if (relative && one < 0) {
          const ratio = aggregate(row.members.map(l => (col[l] > 0 && baseOf(l) > 0 ? col[l] / baseOf(l) : NaN)), row.members.map((_, k) => k), agg);
          zr[b] = ratio > 0 ? Math.log10(ratio) : null;
        } else zr[b] = max > 0 && base > 0 ? Math.log10(max / base) : null;
        if (Number.isFinite(zr[b])) { if (zr[b] < lo) lo = zr[b]; if (zr[b] > hi) hi = zr[b]; }
        if (max === 0) { zz[b] = 1; zeroCount++; }
      }
      z.push(zr);
      maxes.push(mr);
      zero.push(zz);
    }
    const title = titleOf(stat);
    const y = rows.map(r => r.label);
    const span = nb > 1 ? Math.round((body.step_end[nb - 1] - body.step_start[0] + 1) / nb) : 1;
    // The row's label names the tensor, or the block and its aggregate (▸ layer3.4 (max of 6)); no
    // per-cell hover text: at 300 rows x 600 columns it would be 180k more strings per redraw.
    const at = `step %{x:.0f}${span > 1 ? ` (±${Math.ceil(span / 2)})` : ''}<br>%{y}<br>`;
    const colorbar = linear ? title : relative ? `log₁₀ ${title}<br>÷ its first ${BASE_COLUMNS} columns` : `log₁₀ ${title}`;
    const trace = {
      uid: 'heatmap', type: 'heatmap', x, y, z, customdata: maxes, hoverongaps: false,
      // Relative: red grew, blue shrank, white as at the start.
      ...(relative ? { colorscale: 'RdBu', reversescale: true, zmid: 0 } : { colorscale: 'Viridis' }),
      // The color range: fractions 0 to 1; log values from their least to their greatest, found
      // here in passing (what Plotly's own autorange would find, by a scan of z that took ~10% of
      // a 300-row redraw); relative ones by Plotly, about 0.
      ...(linear ? { zmin: 0, zmax: 1 } : !relative && lo <= hi ? { zmin: lo, zmax: hi } : {}),
      colorbar: { title: { text: `${colorbar}<br>(bucket max)`, side: 'right' }, thickness: 12, outlinewidth: 0 },
      hovertemplate: `${at}${title}: max %{customdata:.3g}`
        + `${relative ? ' (10^%{z:.2f} × its start)' : ''}<extra></extra>`,
    };
    if (!zeroCount) return { trace, zeros: null };
    return {
      trace,
      zeros: {
        count: zeroCount,
        trace: {
          uid: 'heatmap-zeros', type: 'heatmap', x, y, z: zero, showscale: false, hoverongaps: false,
          colorscale: [[0, ZERO], [1, ZERO]], zmin: 0, zmax: 1,
          hovertemplate: `${at}${title}: exactly 0 (grey: no log of 0)<extra></extra>`,
        },
      },
    };
  }

  layoutFor(run, body, view, zeros) {
    // Changing the run resets the zoom; new steps of the same run keep it.
    const lay = layout({ ytitle: '', uirevision: run.id });
    lay.showlegend = false;
    Object.assign(lay.yaxis, { type: 'category', autorange: 'reversed', title: { text: '' } });
    blockTicks(lay.yaxis, this.rows, this.starts);
    // The row labels' margin, set here rather than by Plotly's automargin: a view change puts
    // labels of another width there (a tensor's name, a block's, one per block), and automargin
    // then lays the whole figure out twice (a second full draw once it has measured them): about
    // half of the heatmap's redraw in a synthetic figure. The labels are measured in its font.
    const width = labelWidth(lay.yaxis.ticktext ?? this.rows.map(r => r.label), lay.font);
    if (width != null) {
      lay.yaxis.automargin = false;
      lay.margin.l = Math.max(lay.margin.l, width + LABEL_GAP);
    }
    if (body.step_end[body.step_end.length - 1] <= 10) lay.xaxis.dtick = 1; // no "step 1.5" ticks
    setX(lay.xaxis, view.xrange ?? null);
    const m = markLayout(run.marks, run.color);
    lay.shapes = m.shapes;
    lay.annotations = m.annotations;
    if (zeros) {
      // As on the profiles: a log scale cannot show 0, so say how many cells are exactly 0.
      lay.annotations.push({
        name: 'zeros', text: `${zeros} cell${zeros > 1 ? 's are' : ' is'} exactly 0 (grey): no log of 0`,
        showarrow: false, xref: 'paper', yref: 'paper', x: 1, y: 1, xanchor: 'right', yanchor: 'bottom',
        font: { color: '#8b949e', size: 11 },
      });
    }
    return lay;
  }
}

// The x of each column: its bucket's middle step, or, when every middle lies within EVEN_TOLERANCE
// of a column of the evenly spaced grid from the first middle to the last, that grid. Plotly draws
// a heatmap with evenly spaced columns (to 1% of a column) as one pixel per cell that the browser
// scales up, crisp ("image-rendering: pixelated"); otherwise as a filled rectangle per cell on a
// canvas the size of the plot, encoded as a PNG on every redraw: at 300 rows x 500 columns that is
// 3-6x slower. The server's buckets are rows of the run split as evenly as whole rows allow
// (40 or 41 steps at 20k steps in 500 columns), so their middles sit up to a step off the grid:
// 2% of a column at 20k steps, 9% at 5k; shorter runs of more than 500 steps keep the exact
// middles (and the slower drawing). Hover names the drawn x, within a tenth of a column of the
// bucket's middle.
export const EVEN_TOLERANCE = 0.1;
export function columnsX(start, end) {
  const mid = start.map((s, b) => (s + end[b]) / 2);
  const n = mid.length;
  if (n < 3) return mid;
  const dx = (mid[n - 1] - mid[0]) / (n - 1);
  const even = mid.map((_, b) => mid[0] + b * dx);
  return dx > 0 && mid.every((m, b) => Math.abs(m - even[b]) <= EVEN_TOLERANCE * dx) ? even : mid;
}

const shownKey = view => [view.heatRun, view.stat, view.layers, view.relative, view.filter, view.agg, view.open.join(',')].join('|');

// The median of a layer's first (up to) BASE_COLUMNS positive bucket maxima: its own start.
function baseline(max, l, nb) {
  const v = [];
  for (let b = 0; b < nb && v.length < BASE_COLUMNS; b++) {
    const m = max[b][l];
    if (m > 0 && Number.isFinite(m)) v.push(m);
  }
  if (!v.length) return NaN;
  v.sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}
