/* global Plotly */
// Per-layer profiles (x = layer in forward order, y = a statistic, log) of
// the selected runs at one step: the latest while following live, or the
// step the scrubber chose. Gradient norm shows vanishing (falling to the
// left) or exploding (rising) gradients; weight norm and update ratio show
// which layers L2 shrinks and which barely learn. Rebuilt whole with react()
// (a few hundred points), keeping the person's zoom.

import { CONFIG, NO_RUNS, labelWidth, layout, mergeOrder, positive, uid } from './plot.js';
import { markLayout } from './markers.js';
import { blockTicks, layerRows, pathOf, rowValue } from './layers.js';
import { axisOf, isLinear } from './stats.js';

const FINITE_BACK = 50; // rows looked back for a finite one
const BELOW_LABELS = 35; // px under the turned layer labels: the axis title and gaps (labelMargins)
const LEFT_SPARE = 2; // px left of the first layer label's reach (labelMargins; the reach is an upper bound)
const MARKERS_UP_TO = 60; // points of a profile drawn with markers (hundreds of tensors: lines only)

// Which chart shows which statistic; its axis title and scale come from the registry (stats.js).
export const PROFILE_SPECS = [
  { id: 'chart-layers', name: 'grad-norm-per-layer', stat: 'grad_norm' },
  { id: 'chart-weights', name: 'weight-norm-per-layer', stat: 'weight_norm' },
  { id: 'chart-updates', name: 'update-ratio-per-layer', stat: 'update_ratio' },
];

// A layer's weight matrix (Linear, conv): what "weights only" keeps. Biases and
// normalization parameters (BatchNorm's γ and β) sit between them otherwise,
// and their norms are of another size: the profile becomes a saw-tooth.
export const isWeight = layer => /(^|\.)weight$/.test(layer.name) && !/Norm/.test(layer.module ?? '');

const viewKey = view => [view.layers, view.filter, view.agg, view.open.join(',')].join('|');

export class ProfileFigure {
  constructor(div, spec) {
    this.div = div;
    this.spec = spec;
    this.key = null;
    Plotly.newPlot(div, [], this.layout(NO_RUNS, []), CONFIG);
  }

  layout(empty, order) {
    const lay = layout({ xtitle: 'layer (forward order)', ytitle: axisOf(this.spec.stat), log: !isLinear(this.spec.stat), empty });
    // No legend: the chips above the charts name the runs in their colors, and a
    // legend of eight entries would be redrawn (and measured) on every step.
    lay.showlegend = false;
    lay.margin.t = 10;
    // Deep nets have 50+ parameters: let Plotly thin the labels (every point keeps its hover name).
    Object.assign(lay.xaxis, {
      type: 'category', categoryorder: 'array', categoryarray: order, tickangle: -35, nticks: 24, tickfont: { size: 10 },
    });
    return lay;
  }

  // The row each run shows: its last stored step at or before view.step.
  // The row each run shows: its last stored step at or before view.step, or before that
  // the last with a finite value of the statistic (a diverged run's last steps are all NaN:
  // its profile is the one at its last finite step, where the blow-up shows).
  rows(runs, view) {
    return runs.map(run => {
      const s = run.series;
      let i = s.layers.length ? s.indexAt(view.step) : -1;
      const col = s.stats[this.spec.stat];
      for (let back = 0; i > 0 && back < FINITE_BACK && !col.row(i).some(Number.isFinite); back++) i--;
      return { run, i };
    });
  }

  keyNow(runs, view) {
    return this.rows(runs, view).map(({ run, i }) =>
      [run.id, run.name, run.color, run.focused, run.series.version, i, run.series.length ? run.series.step.get(Math.max(i, 0)) : '', run.marksKey].join('|')).join(';')
      + `|${viewKey(view)}`;
  }

  stale(runs, view) { return this.keyNow(runs, view) !== this.key; }

  // Another set of runs (or colors) is what the person waits for; a new step is not.
  structure(runs) {
    return runs.map(r => [r.id, r.color, r.focused, r.series.version, r.series.length > 0].join('|')).join(';');
  }

  urgent(runs, view) { return `${this.structure(runs)}|${viewKey(view)}` !== this.drawnStructure; }

  // The block a category of the drawn figure stands for (a click on it opens or closes it), or null.
  blockAt(label) {
    const rows = this.drawnRows ?? [];
    const row = rows.find(r => r.label === label);
    return row && (row.kind === 'block' || rows.some(r => r.kind === 'block' && r.block === row.block)) ? row.block : null;
  }

  // The layer labels' margins, set here rather than by Plotly's automargin (as the heatmap's rows):
  // a view change brings labels of another width, and automargin then draws the figure a second
  // time once it has measured them. Below the plot: the widest label turned by the axis' angle,
  // plus the axis title (BELOW_LABELS: automargin's margin in Chromium was 0.574 x the widest
  // label + 35 px, for labels of 25-86 px); left of it, what the first label reaches past the
  // first point, an upper bound (the turned label's box from its anchor; with LEFT_SPARE 8 it was
  // 10 px over automargin's in tests/test_browser_layers.py). Labels Plotly thins out still count:
  // at worst a few pixels more margin than automargin's.
  labelMargins(lay, points) {
    const ax = lay.xaxis;
    const labels = ax.ticktext ?? ax.categoryarray;
    const font = { family: lay.font.family, size: ax.tickfont.size };
    const widest = labelWidth(labels, font);
    if (widest == null) return;
    const turn = (Math.abs(ax.tickangle) * Math.PI) / 180;
    ax.automargin = false;
    lay.margin.b = Math.max(lay.margin.b, Math.round(widest * Math.sin(turn) + BELOW_LABELS));
    const firstAt = ((this.div.clientWidth || 600) - lay.margin.l - lay.margin.r) / (2 * points);
    const reach = labelWidth(labels.slice(0, 1), font) * Math.cos(turn) + font.size * Math.sin(turn) - firstAt;
    lay.margin.l = Math.max(lay.margin.l, Math.ceil(reach + LEFT_SPARE));
  }

  draw(runs, view) {
    const key = this.keyNow(runs, view);
    if (key === this.key) return;
    this.key = key;
    this.drawnStructure = `${this.structure(runs)}|${viewKey(view)}`;
    const shown = this.rows(runs, view).filter(r => r.i >= 0);
    // What each run draws (layers.js layerRows; members index its layer list): with "weights
    // only", the weights and, if the run diverged in another parameter, that one (its marker
    // needs it); then the person's filter, and with an aggregate a point per block.
    const layoutOf = new Map(shown.map(({ run }) => {
      const diverged = new Set(run.marks.filter(m => m.kind === 'diverged' && m.layer).map(m => m.layer));
      const ls = run.series.layers;
      const keep = view.layers !== 'weights' ? () => true : k => isWeight(ls[k]) || diverged.has(ls[k].name);
      return [run, layerRows(ls.map(l => l.name), { keep, filter: view.filter, agg: view.agg, open: view.open })];
    }));
    const kept = run => layoutOf.get(run).rows;
    const order = mergeOrder(shown.map(({ run }) => kept(run).map(r => r.label)));
    this.drawnRows = shown.flatMap(({ run }) => kept(run));
    const data = shown.map(({ run, i }) => {
      const s = run.series;
      const row = s.stats[this.spec.stat].row(i);
      const ks = kept(run);
      return {
        uid: uid(run.id, this.spec.stat),
        type: 'scatter',
        // A marker is an SVG element restyled on every redraw: past MARKERS_UP_TO points, a line only.
        mode: ks.length > MARKERS_UP_TO ? 'lines' : 'lines+markers',
        name: `${run.name} @ step ${s.step.get(i)}`,
        legendgroup: run.id,
        x: ks.map(r => r.label),
        y: ks.map(r => positive(rowValue(r, row, view.agg))),
        customdata: ks.map(r => (r.kind === 'tensor'
          ? `${pathOf(s.layers[r.members[0]].name)}: ${s.layers[r.members[0]].module} ${JSON.stringify(s.layers[r.members[0]].shape)}`
          : `${view.agg} of its ${r.members.length} tensors; click: ${r.open ? 'close' : 'open'}`)),
        line: { color: run.color, width: run.focused ? 2.5 : 1.5 },
        marker: { color: run.color, size: 5 },
        hovertemplate: `%{customdata}<br>${axisOf(this.spec.stat)} %{y:.3g}<extra>%{fullData.name}</extra>`,
      };
    });
    // A log axis cannot draw 0 (a layer whose gradient is exactly zero, a dead layer): say so,
    // rather than leave a silent gap.
    const zeros = shown.reduce((n, { run, i }) => {
      const row = run.series.stats[this.spec.stat].row(i);
      return n + kept(run).filter(r => rowValue(r, row, view.agg) === 0).length;
    }, 0);
    let empty = false;
    if (!data.length) empty = runs.length ? (view.step == null ? 'no steps recorded yet' : `no steps at or before ${view.step}`) : NO_RUNS;
    else if (!order.length && view.filter) empty = `no layer matches "${view.filter}"`;
    const lay = this.layout(empty, order);
    // Hundreds of tensors: the x axis names the blocks (each at its first tensor), not every tensor.
    if (shown.length) {
      const first = layoutOf.get(shown[0].run);
      blockTicks(lay.xaxis, first.rows, first.starts);
    }
    if (order.length) this.labelMargins(lay, order.length);
    if (zeros) {
      lay.annotations.push({
        name: 'zeros', text: `${zeros} value${zeros > 1 ? 's are' : ' is'} exactly 0: not drawn on a log axis`,
        showarrow: false, xref: 'paper', yref: 'paper', x: 1, y: 1, xanchor: 'right', yanchor: 'top',
        font: { color: '#8b949e', size: 11 },
      });
    }
    // Where a run diverged: its layer, marked.
    for (const { run } of shown) {
      // On the row that shows the layer (its block's, when the block is closed); none if filtered out.
      const rowOf = new Map(kept(run).flatMap(r => r.members.map(k => [run.series.layers[k].name, r.label])));
      const marks = run.marks.flatMap(m => (!m.layer ? [m] : rowOf.has(m.layer) ? [{ ...m, layer: rowOf.get(m.layer) }] : []));
      const m = markLayout(marks, run.color, { layerAxis: true });
      lay.shapes.push(...m.shapes);
      lay.annotations.push(...m.annotations);
    }
    Plotly.react(this.div, data, lay, CONFIG);
  }
}
