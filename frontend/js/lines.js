/* global Plotly */
// The step-indexed line charts (loss, accuracy, global gradient norm) of the
// selected runs. A figure is created once; after that a draw either extends
// its traces with the points that arrived since the last one
// (Plotly.extendTraces) or, when the set of traces or a setting changed,
// replaces them with Plotly.react. Every layout carries a `uirevision` and
// every trace a `uid`, so the person's zoom and legend-hidden traces survive
// both. Markers (interventions, alerts, divergence) are layout shapes,
// replaced with relayout only when they change.

import { CONFIG, NO_RUNS, layout, positive, uid } from './plot.js';
import { ema } from './smooth.js';
import { markLayout, stepLine } from './markers.js';

// What the figures are. `smooth`: follows the smoothing slider; `scaleToggle`:
// follows the log/linear setting; `log`: always log.
export const LINE_SPECS = [
  { id: 'chart-loss', name: 'loss', ytitle: 'loss', key: 'loss', smooth: true, scaleToggle: true },
  { id: 'chart-acc', name: 'accuracy', ytitle: 'accuracy', key: 'accuracy', smooth: true, val: true },
  { id: 'chart-gnorm', name: 'grad-norm', ytitle: 'global grad norm', key: 'gnorm', log: true },
];

const RAW_OPACITY = 0.28;

export class LineFigure {
  constructor(div, spec) {
    this.div = div;
    this.spec = spec;
    this.key = null;
    this.marksKey = null;
    this.traces = [];  // [{run, kind: 'raw' | 'line' | 'val', drawn, ema}]: raw only while smoothing
    Plotly.newPlot(div, [], layout({ ...spec, empty: NO_RUNS }), CONFIG);
  }

  isLog(view) {
    return Boolean(this.spec.log || (this.spec.scaleToggle && view.scale === 'log'));
  }

  // runs: [{id, name, color, focused, series, marks}]; view: {smooth, scale, step}.
  stale(runs, view) {
    return this.traceKey(runs, view) !== this.key || this.marksKeyNow(runs, view) !== this.marksKey
      || this.traces.some(t => t.run.series.length > t.drawn || (t.kind === 'val' && t.run.series.valStep.length > t.drawn));
  }

  weight(view) {
    return this.spec.smooth ? view.smooth : 0;
  }

  traceKey(runs, view) {
    return `${this.weight(view)}|${this.isLog(view)}|` + runs.map(r =>
      [r.id, r.name, r.color, r.focused, r.series.version].join('|')).join(';');
  }

  marksKeyNow(runs, view) {
    return `${view.step}|` + runs.map(r => `${r.id}:${r.color}:${r.marksKey}`).join(';');
  }

  draw(runs, view) {
    const key = this.traceKey(runs, view);
    if (key !== this.key) this.rebuild(runs, view, key);
    else this.extend(view);
    const marksKey = this.marksKeyNow(runs, view);
    if (marksKey !== this.marksKey) {
      this.marksKey = marksKey;
      Plotly.relayout(this.div, this.markLayout(runs, view));
    }
  }

  // The axes a run's traces use ({x: 'x', y: 'y'}: one plot area; subclasses split it).
  axesOf() { return { x: 'x', y: 'y' }; }

  baseLayout(runs, view) {
    return layout({ ...this.spec, log: this.isLog(view), empty: !runs.length && NO_RUNS });
  }

  markLayout(runs, view) {
    const shapes = [...stepLine(view.step)];
    const annotations = [];
    let slot = 0;
    for (const run of runs) {
      const m = markLayout(run.marks, run.color, { slot });
      slot = m.slot;
      shapes.push(...m.shapes);
      annotations.push(...m.annotations);
    }
    return { shapes, annotations };
  }

  // y values for one trace from index `from` on, continuing its EMA.
  values(t, from, view) {
    const s = t.run.series;
    if (t.kind === 'val') return s.valAccuracy.slice(from);
    let y = s.ys(this.spec.key, from);
    if (t.kind === 'line' && this.weight(view) > 0) {
      const out = ema(y, this.weight(view), t.ema);
      t.ema = out.state;
      y = out.values;
    }
    return this.isLog(view) ? y.map(positive) : y;
  }

  xsOf(t, from) {
    return t.kind === 'val' ? t.run.series.valStep.slice(from) : t.run.series.xs(from);
  }

  lengthOf(t) {
    return t.kind === 'val' ? t.run.series.valStep.length : t.run.series.length;
  }

  rebuild(runs, view, key) {
    this.key = key;
    this.marksKey = null;
    // Kind-major order: smoothed lines over their faint raw lines, validation markers on top.
    const kinds = this.weight(view) > 0 ? ['raw', 'line'] : ['line'];
    if (this.spec.val) kinds.push('val');
    this.traces = [];
    for (const kind of kinds) for (const run of runs) this.traces.push({ run, kind, drawn: 0, ema: undefined });
    const { ytitle } = this.spec;
    const data = this.traces.map(t => {
      const { run, kind } = t;
      const x = this.xsOf(t, 0);
      const y = this.values(t, 0, view);
      t.drawn = x.length;
      const width = run.focused ? 2.5 : 1.5;
      const axes = this.axesOf(run);
      const trace = {
        xaxis: axes.x, yaxis: axes.y,
        uid: uid(run.id, `${this.spec.key}-${kind}`),
        type: 'scatter', mode: kind === 'val' ? 'markers' : 'lines', x, y,
        name: run.name + (kind === 'val' ? ' (val)' : kind === 'raw' ? ' (raw)' : ''),
        legendgroup: run.id,
        showlegend: kind === 'line',
        line: { color: run.color, width: kind === 'raw' ? 1 : width },
        marker: { color: run.color, size: 9, symbol: 'diamond', line: { color: '#fff', width: 1 } },
        hovertemplate: `%{fullData.name}<br>step %{x}<br>${ytitle} %{y:.4g}<extra></extra>`,
      };
      if (kind === 'raw') Object.assign(trace, { opacity: RAW_OPACITY, hoverinfo: 'skip', hovertemplate: undefined });
      return trace;
    });
    // The layout's own notes (the "select a run" hint) plus the markers; a later
    // relayout of the markers replaces both, and the hint shows only without runs.
    const lay = this.baseLayout(runs, view);
    const m = this.markLayout(runs, view);
    lay.shapes = [...lay.shapes, ...m.shapes];
    lay.annotations = [...lay.annotations, ...m.annotations];
    this.marksKey = this.marksKeyNow(runs, view);
    Plotly.react(this.div, data, lay, CONFIG);
  }

  // Same traces: append only what is new.
  extend(view) {
    const idx = [], xs = [], ys = [];
    this.traces.forEach((t, i) => {
      const n = this.lengthOf(t);
      if (n <= t.drawn) return;
      idx.push(i);
      xs.push(this.xsOf(t, t.drawn));
      ys.push(this.values(t, t.drawn, view));
      t.drawn = n;
    });
    if (idx.length) Plotly.extendTraces(this.div, { x: xs, y: ys }, idx);
  }
}
