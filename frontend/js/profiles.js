/* global Plotly */
// Per-layer profiles (x = layer in forward order, y = a statistic, log) of
// the selected runs at one step: the latest while following live, or the
// step the scrubber chose. Gradient norm shows vanishing (falling to the
// left) or exploding (rising) gradients; weight norm and update ratio show
// which layers L2 shrinks and which barely learn. Rebuilt whole with react()
// (a few hundred points), keeping the person's zoom.

import { CONFIG, NO_RUNS, layout, mergeOrder, positive, uid } from './plot.js';
import { markLayout } from './markers.js';

const FINITE_BACK = 50; // rows looked back for a finite one

export const PROFILE_SPECS = [
  { id: 'chart-layers', name: 'grad-norm-per-layer', stat: 'grad_norm', ytitle: 'grad norm' },
  { id: 'chart-weights', name: 'weight-norm-per-layer', stat: 'weight_norm', ytitle: 'weight norm' },
  { id: 'chart-updates', name: 'update-ratio-per-layer', stat: 'update_ratio', ytitle: '‖Δw‖ / ‖w‖' },
];

// A layer's weight matrix (Linear, conv): what "weights only" keeps. Biases and
// normalization parameters (BatchNorm's γ and β) sit between them otherwise,
// and their norms are of another size: the profile becomes a saw-tooth.
export const isWeight = layer => /(^|\.)weight$/.test(layer.name) && !/Norm/.test(layer.module ?? '');

export class ProfileFigure {
  constructor(div, spec) {
    this.div = div;
    this.spec = spec;
    this.key = null;
    Plotly.newPlot(div, [], this.layout(NO_RUNS, []), CONFIG);
  }

  layout(empty, order) {
    const lay = layout({ xtitle: 'layer (forward order)', ytitle: this.spec.ytitle, log: true, empty });
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
      + `|${view.layers}`;
  }

  stale(runs, view) { return this.keyNow(runs, view) !== this.key; }

  // Another set of runs (or colors) is what the person waits for; a new step is not.
  structure(runs) {
    return runs.map(r => [r.id, r.color, r.focused, r.series.version, r.series.length > 0].join('|')).join(';');
  }

  urgent(runs, view) { return `${this.structure(runs)}|${view.layers}` !== this.drawnStructure; }

  draw(runs, view) {
    const key = this.keyNow(runs, view);
    if (key === this.key) return;
    this.key = key;
    this.drawnStructure = `${this.structure(runs)}|${view.layers}`;
    const shown = this.rows(runs, view).filter(r => r.i >= 0);
    // Which of each run's layers are drawn (indices into its layer list): with "weights only",
    // the weights and, if the run diverged in another parameter, that one (its marker needs it).
    const keptOf = new Map(shown.map(({ run }) => {
      const diverged = new Set(run.marks.filter(m => m.kind === 'diverged' && m.layer).map(m => m.layer));
      return [run, run.series.layers.flatMap((l, k) => (view.layers !== 'weights' || isWeight(l) || diverged.has(l.name) ? [k] : []))];
    }));
    const kept = run => keptOf.get(run);
    const order = mergeOrder(shown.map(({ run }) => kept(run).map(k => run.series.layers[k].name)));
    const data = shown.map(({ run, i }) => {
      const s = run.series;
      const row = s.stats[this.spec.stat].row(i);
      const ks = kept(run);
      return {
        uid: uid(run.id, this.spec.stat),
        type: 'scatter',
        mode: 'lines+markers',
        name: `${run.name} @ step ${s.step.get(i)}`,
        legendgroup: run.id,
        x: ks.map(k => s.layers[k].name),
        y: ks.map(k => positive(row[k])),
        customdata: ks.map(k => `${s.layers[k].module} ${JSON.stringify(s.layers[k].shape)}`),
        line: { color: run.color, width: run.focused ? 2.5 : 1.5 },
        marker: { color: run.color, size: 5 },
        hovertemplate: `%{x} (%{customdata})<br>${this.spec.ytitle} %{y:.3g}<extra>%{fullData.name}</extra>`,
      };
    });
    // A log axis cannot draw 0 (a layer whose gradient is exactly zero, a dead layer): say so,
    // rather than leave a silent gap.
    const zeros = shown.reduce((n, { run, i }) => n + kept(run).filter(k => run.series.stats[this.spec.stat].row(i)[k] === 0).length, 0);
    let empty = false;
    if (!data.length) empty = runs.length ? (view.step == null ? 'no steps recorded yet' : `no steps at or before ${view.step}`) : NO_RUNS;
    const lay = this.layout(empty, order);
    if (zeros) {
      lay.annotations.push({
        name: 'zeros', text: `${zeros} value${zeros > 1 ? 's are' : ' is'} exactly 0: not drawn on a log axis`,
        showarrow: false, xref: 'paper', yref: 'paper', x: 1, y: 1, xanchor: 'right', yanchor: 'top',
        font: { color: '#8b949e', size: 11 },
      });
    }
    // Where a run diverged: its layer, marked.
    for (const { run } of shown) {
      const m = markLayout(run.marks, run.color, { layerAxis: true });
      lay.shapes.push(...m.shapes);
      lay.annotations.push(...m.annotations);
    }
    Plotly.react(this.div, data, lay, CONFIG);
  }
}
