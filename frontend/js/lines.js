/* global Plotly */
// The step-indexed line charts (loss, accuracy, global gradient norm) of the
// selected runs. A figure is created once; after that a draw either extends
// its traces with the points that arrived since the last one
// (Plotly.extendTraces) or, when the set of traces or a setting changed,
// replaces them with Plotly.react. Every layout carries a `uirevision` and
// every trace a `uid`, so the person's zoom and legend-hidden traces survive
// both. Interventions and divergence are layout shapes with a label,
// replaced with relayout only when they change; alerts are one trace of
// markers along the top (see alertTrace).

import { CONFIG, NO_RUNS, labelWidth, layout, positive, relayoutX, setX, uid } from './plot.js';
import { ema } from './smooth.js';
import { markLayout, stepLine } from './markers.js';
import { autoLog } from './diagnosis.js';
import { decimate } from './decimate.js';

// What the figures are. `smooth`: follows the smoothing slider; `scaleToggle`:
// follows the auto/linear/log setting (auto: diagnosis.js autoLog, over the
// RunSeries.range of `key`); `log`: always log; `fromZero`: a linear axis that starts at 0.
export const LINE_SPECS = [
  { id: 'chart-loss', name: 'loss', ytitle: 'loss', key: 'loss', smooth: true, scaleToggle: true, val: 'valLoss' },
  { id: 'chart-acc', name: 'accuracy', ytitle: 'accuracy', key: 'accuracy', smooth: true, val: 'valAccuracy' },
  { id: 'chart-gnorm', name: 'grad-norm', ytitle: 'global grad norm', key: 'gnorm', scaleToggle: true },
  {
    id: 'chart-lr', name: 'learning-rate', ytitle: 'learning rate', key: 'lr', fromZero: true,
    none: runs => runs.every(r => r.series.length && r.series.lr.values().every(v => !Number.isFinite(v)))
      && 'these runs do not report their learning rate',
  },
  // From the statistics taken every stats_every steps (RunSeries.layerStats), at the bottom of
  // the page. `none`: the note shown when no selected run has what the chart plots.
  {
    id: 'chart-efflr', name: 'eff-lr', ytitle: 'lr / ‖w‖²', key: 'effLr', log: true, source: 'layerStats',
    none: runs => runs.every(r => r.series.length && !r.series.bnFeeds.length)
      && 'no BatchNorm in these runs: no effective learning rate',
  },
  {
    id: 'chart-dead', name: 'dead-units', ytitle: 'dead fraction', key: 'dead', source: 'layerStats',
    none: runs => runs.every(r => r.series.length && r.series.dead.values().every(v => !Number.isFinite(v)))
      && 'no ReLU in these runs: dead units are counted for ReLU only',
  },
];

const RAW_OPACITY = 0.28;
const FIXED = new Set(['alerts', 'prefix']); // traces drawn whole on a rebuild, never extended
const alertSteps = run => run.marks.filter(m => m.kind === 'alert').map(m => m.step).join(',');
const RAW_ALL_UP_TO = 3; // runs shown with their raw line; beyond, only the focused one
const VAL_MARKERS = 120; // validation markers drawn on a rebuild, all runs together
// The left margin past the widest y tick label (with the axis title): what Plotly's automargin gave
// in Chromium (76 px for labels 52 wide, 66 for 42; tests/test_browser_compare.py checks the labels
// fit). SHRINK: a margin this much wider than needed is narrowed (not on every px of change).
const Y_LABEL_ROOM = 24;
const SHRINK = 12;
// A rebuild draws each trace decimated to at most 2 points per pixel column (decimate.js); live
// points are appended as they come until a trace holds CROWDED points per column, and the next
// draw is a rebuild again. Plotly redraws every point on each update: five traces of 3000 points
// made a redraw ~50% slower than five of 700 (a synthetic figure in Chromium on the 2-core VM).
const CROWDED = 3;

// The steps the runs' series span: [first, last] over all of them ([0, 1] without any).
function stepSpan(runs) {
  let lo = Infinity, hi = -Infinity;
  for (const run of runs) {
    if (!run.series.length) continue;
    lo = Math.min(lo, run.series.step.get(0));
    hi = Math.max(hi, run.series.step.get(run.series.length - 1));
  }
  return lo < hi ? [lo, hi] : [0, 1];
}

export class LineFigure {
  constructor(div, spec) {
    this.div = div;
    this.spec = spec;
    this.key = null;      // traceKey of the traces drawn
    this.askedKey = null; // the same without the data's part: what the person chose
    this.marksKey = null;
    // [{run, kind: 'raw' | 'line', drawn, shown, rebuilt, ema}] or {kind: 'val', runs, drawn: [per run]}: `drawn`, how
    // many of the series' points the trace covers; `shown`, how many it holds (fewer once decimated);
    // `rebuilt`, how many it held after the last rebuild.
    this.traces = [];
    this.cols = 600;   // the plot's width in px at the last rebuild: columns to decimate to
    this.thinned = false; // some trace was decimated: a new x range is drawn by a rebuild, with its detail
    this.log = false;  // the y axis drawn: log (set on each rebuild)
    this.xKey = null;  // the x range drawn (JSON of view.xrange)
    this.note = div.closest('figure')?.querySelector('.scale-note') ?? null; // says which axis, and why
    this.marginL = null; // the left margin the y tick labels need (fitLabels), once drawn
    this.labelRoom = Y_LABEL_ROOM;
    this.requestDraw = () => {};
    // Alerts as one trace of markers along the top (cheaper than a shape each, and
    // they hover); the small multiples keep shapes.
    this.alertsAsTrace = true;
    Plotly.newPlot(div, [], layout({ ...spec, empty: NO_RUNS }), CONFIG);
    // Hiding a run in the legend must hide its validation points too, which share
    // one trace: rebuild once Plotly has applied the click.
    const legend = () => setTimeout(() => { this.key = this.askedKey = null; this.requestDraw(); });
    div.on('plotly_legendclick', legend);
    div.on('plotly_legenddoubleclick', legend);
  }

  // A rebuild for new runs or settings, and a run's first points (its history came), are what
  // the person waits for; extends are not, nor a rebuild because a series thinned or an alert came.
  urgent(runs, view) {
    return this.traceKey(runs, view, false) !== this.askedKey || this.xStale(view)
      || this.traces.some(t => t.run && !FIXED.has(t.kind) && !t.drawn && t.run.series.length);
  }

  // The y axis for these runs: {log, why, auto}. On "auto", log when the values span more than
  // a few decades or a run diverged (diagnosis.js); the person's linear/log wins.
  scaleNow(runs, view) {
    if (this.spec.log) return { log: true, why: '', auto: false };
    if (!this.spec.scaleToggle) return { log: false, why: '', auto: false };
    if (view.scale !== 'auto') return { log: view.scale === 'log', why: '', auto: false };
    let lo = Infinity, hi = -Infinity, diverged = false;
    for (const run of runs) {
      const [a, b] = run.series.range?.[this.spec.key] ?? [Infinity, -Infinity];
      lo = Math.min(lo, a);
      hi = Math.max(hi, b);
      diverged ||= Boolean(run.diverged);
    }
    return { ...autoLog(lo, hi, diverged), auto: true };
  }

  isLog() { return this.log; }

  // runs: [{id, name, color, focused, series, marks}]; view: {smooth, scale, step}.
  stale(runs, view) {
    return this.traceKey(runs, view) !== this.key || this.marksKeyNow(runs, view) !== this.marksKey || this.xStale(view)
      || this.traces.some(t => (t.kind === 'val'
        ? t.runs.some((run, i) => run.series.valStep.length > t.drawn[i])
        : !FIXED.has(t.kind) && t.run.series.length > t.drawn));
  }

  weight(view) {
    return this.spec.smooth ? view.smooth : 0;
  }

  // What the traces are drawn from; `data` false: only what the person chose (runs, settings), not
  // the series' version (thinned) or its alerts, and not a run without points yet: a run just
  // ticked is drawn urgently once its history came, not before it too (each redraw of eight long
  // runs is ~100 ms on the 2-core VM, one chart a frame).
  traceKey(runs, view, data = true) {
    this.scale = this.scaleNow(runs, view); // (its reason may change without a rebuild: draw() shows it)
    return `${this.weight(view)}|${this.scale.log}|` + runs.filter(r => data || r.series.length).map(r =>
      [r.id, r.name, r.color, r.focused, data ? r.series.version : '', data && this.alertsAsTrace ? alertSteps(r) : '',
        r.prefix?.step.length ?? ''].join('|')).join(';');
  }

  marksKeyNow(runs, view) {
    return `${view.step}|` + runs.map(r => `${r.id}:${r.color}:${r.marksKey}`).join(';');
  }

  draw(runs, view) {
    const key = this.traceKey(runs, view);
    if (key !== this.key || this.crowded() || (this.thinned && this.xStale(view))) this.rebuild(runs, view, key);
    else this.extend(view);
    this.fitLabels();
    this.showScale(this.scale);
    const marksKey = this.marksKeyNow(runs, view);
    if (marksKey !== this.marksKey) {
      this.marksKey = marksKey;
      Plotly.relayout(this.div, this.markLayout(runs, view));
    }
    const xKey = JSON.stringify(view.xrange ?? null);
    if (xKey !== this.xKey) {
      this.xKey = xKey;
      relayoutX(this.div, view.xrange ?? null);
    }
  }

  // Would appending what is new put more than CROWDED points per column in some trace (and a
  // column's worth more than the last rebuild drew: zoomed in, decimating drops little)?
  crowded() {
    return this.traces.some(t => {
      if (!t.run || FIXED.has(t.kind)) return false;
      const after = t.shown + t.run.series.length - t.drawn;
      return after > CROWDED * this.cols && after > t.rebuilt + this.cols;
    });
  }

  // The x range asked for and not drawn yet (another chart was zoomed): the person waits for it.
  xStale(view) { return JSON.stringify(view.xrange ?? null) !== this.xKey; }

  // The y tick labels' room, kept here rather than by Plotly's automargin, which measures every
  // tick label's box (a forced layout each) and lays the figure out again on every redraw (with the
  // check below, about a third of a live chart's redraw in a profile). After a draw the labels
  // Plotly chose are measured in the figure's font on a canvas (no layout); the margin is set
  // again only when they do not fit, or leave SHRINK px more than they need.
  fitLabels() {
    const texts = [...(this.div.querySelectorAll?.('.yaxislayer-above .ytick text') ?? [])].map(t => t.textContent);
    const font = this.div.layout?.font;
    if (!texts.length || !font) return;
    const need = Math.max(this.baseMarginL, labelWidth(texts, font) + this.labelRoom);
    const now = this.div.layout.margin?.l ?? need;
    if (need <= now && need > now - SHRINK) return;
    this.marginL = need;
    Plotly.relayout(this.div, { 'margin.l': need });
  }

  // Margins the page keeps (fitLabels): Plotly's automargin off on every axis of `lay`, and its
  // check for tick labels past the figure's edge (another measure of every label) too.
  ownMargins(lay) {
    for (const [k, axis] of Object.entries(lay)) {
      if (/^[xy]axis\d*$/.test(k)) Object.assign(axis, { automargin: false, ticklabeloverflow: 'allow' });
    }
    this.baseMarginL = lay.margin.l;
    if (this.marginL != null) lay.margin.l = this.marginL;
    return lay;
  }

  // Under the figure's title: which y axis, and on "auto" why.
  showScale(scale) {
    if (!this.note || !this.spec.scaleToggle) return;
    const text = scale.log ? (scale.auto ? `log (auto: ${scale.why})` : 'log') : (scale.auto ? 'linear (auto)' : 'linear');
    if (this.note.textContent !== text) this.note.textContent = text;
  }

  // The axes a run's traces use ({x: 'x', y: 'y'}: one plot area; subclasses split it).
  axesOf() { return { x: 'x', y: 'y' }; }

  baseLayout(runs, view) {
    const none = runs.length && this.spec.none?.(runs);
    const lay = layout({ ...this.spec, log: this.log, empty: (!runs.length && NO_RUNS) || none });
    setX(lay.xaxis, view.xrange ?? null);
    if (this.spec.fromZero) lay.yaxis.rangemode = 'tozero'; // a constant lr shows as its value, not mid-axis
    // Compare at a step: hovering shows every shown run's value at that step in one box.
    lay.hovermode = 'x unified';
    lay.xaxis.unifiedhovertitle = { text: 'step %{x}' };
    return lay;
  }

  markLayout(runs, view) {
    const shapes = [...stepLine(view.step)];
    const annotations = [];
    let slot = 0;
    for (const run of runs) {
      const marks = this.alertsAsTrace ? run.marks.filter(m => m.kind !== 'alert') : run.marks;
      const m = markLayout(marks, run.color, { slot });
      slot = m.slot;
      shapes.push(...m.shapes);
      annotations.push(...m.annotations);
    }
    return { shapes, annotations };
  }

  // y values for one trace from index `from` on, continuing its EMA.
  values(t, from, view) {
    const s = t.run.series;
    let y = s.ys(this.spec.key, from);
    if (t.kind === 'line' && this.weight(view) > 0) {
      const out = ema(y, this.weight(view), t.ema);
      t.ema = out.state;
      y = out.values;
    }
    return this.log ? y.map(positive) : y;
  }

  // The validation points of every run in one trace (a trace per run would
  // cost Plotly as much as a line, on every redraw), each in its run's color.
  // On a rebuild (`spread`), at most VAL_MARKERS points in all, evenly spread
  // over each run's evaluations (its latest kept): every marker is an SVG
  // element that each redraw restyles. Extends add the new ones as they come.
  valPoints(t, froms, spread = false) {
    const out = { x: [], y: [], color: [], name: [] };
    const per = Math.max(8, Math.floor(VAL_MARKERS / Math.max(1, t.runs.length)));
    t.runs.forEach((run, i) => {
      const s = run.series;
      const n = s.valStep.length - froms[i];
      const every = spread && n > per ? n / per : 1;
      for (let j = 0; j < n; j += every) {
        const k = froms[i] + (every > 1 && j + every >= n ? n - 1 : Math.floor(j));
        const y = s[this.spec.val][k];
        if (y == null) continue; // evaluated without this metric
        out.x.push(s.valStep[k]);
        out.y.push(y);
        out.color.push(run.color);
        out.name.push(run.name);
      }
    });
    return out;
  }

  rebuild(runs, view, key) {
    this.key = key;
    this.askedKey = this.traceKey(runs, view, false);
    this.marksKey = null;
    this.log = this.scale.log;
    this.xKey = JSON.stringify(view.xrange ?? null); // baseLayout draws it
    // Kind-major order: smoothed lines over their faint raw lines, validation markers on top.
    // Raw lines only while smoothing, and with many runs only the focused run's: each
    // trace costs Plotly a fixed amount on every redraw, and eight faint lines are noise.
    const kinds = this.weight(view) > 0 ? ['raw', 'line'] : ['line'];
    this.cols = Math.max(100, Math.round(this.div.clientWidth || 600));
    const [lo, hi] = view.xrange ?? stepSpan(runs);
    this.thinned = false;
    const rawFor = run => runs.length <= RAW_ALL_UP_TO || run.focused;
    this.traces = [];
    for (const kind of kinds) {
      for (const run of runs) if (kind !== 'raw' || rawFor(run)) this.traces.push({ run, kind, drawn: 0, ema: undefined });
    }
    const { ytitle } = this.spec;
    const lay = this.ownMargins(this.baseLayout(runs, view));
    // One box for all runs at a step names each run's value; one point at a time also says where.
    const unified = lay.hovermode === 'x unified';
    const hover = (name, extra = '') => (unified ? `${name}${extra}: %{y:.4g}<extra></extra>`
      : `${name}${extra}<br>step %{x}<br>${ytitle} %{y:.4g}<extra></extra>`);
    const data = this.traces.map(t => {
      const { run, kind } = t;
      const all = { x: t.run.series.xs(0), y: this.values(t, 0, view) };
      const { x, y } = decimate(all.x, all.y, lo, hi, this.cols);
      t.drawn = all.x.length;
      t.shown = t.rebuilt = x.length;
      this.thinned ||= x.length < all.x.length;
      const width = run.focused ? 2.5 : 1.5;
      const axes = this.axesOf(run);
      const trace = {
        xaxis: axes.x, yaxis: axes.y,
        uid: uid(run.id, `${this.spec.key}-${kind}`),
        type: 'scatter', mode: 'lines', x, y,
        name: run.name + (kind === 'raw' ? ' (raw)' : ''),
        legendgroup: run.id,
        showlegend: kind === 'line',
        line: { color: run.color, width: kind === 'raw' ? 1 : width },
        hovertemplate: hover('%{fullData.name}'),
      };
      // Empty, never drawn (lines mode): extendTraces extends the same attributes of
      // every trace it names, and the validation trace needs these two.
      if (this.spec.val) Object.assign(trace, { marker: { color: [] }, customdata: [] });
      if (kind === 'raw') Object.assign(trace, { opacity: RAW_OPACITY, hoverinfo: 'skip', hovertemplate: undefined });
      return trace;
    });
    // A fork's parent before the fork step, faint and dotted beneath the fork's own line.
    const pre = this.spec.source ? [] : runs.filter(r => r.prefix?.[this.spec.key]?.length);
    this.traces.unshift(...pre.map(() => ({ kind: 'prefix' })));
    data.unshift(...pre.map(r => this.prefixTrace(r, view, hover)));
    if (this.spec.val) {
      // Runs hidden in the legend keep their validation points hidden too.
      const hidden = new Set((this.div.data ?? []).filter(d => d.visible === 'legendonly').map(d => d.legendgroup));
      const t = { kind: 'val', runs: runs.filter(r => !hidden.has(r.id)), drawn: [] };
      const v = this.valPoints(t, t.runs.map(() => 0), true);
      t.drawn = t.runs.map(r => r.series.valStep.length);
      this.traces.push(t);
      data.push({
        uid: `val-${this.spec.key}`, type: 'scatter', mode: 'markers', x: v.x, y: v.y, customdata: v.name,
        name: 'validation', showlegend: false,
        // Big diamonds for a few evaluations; many would merge into a band over the lines.
        marker: { color: v.color, size: v.x.length > 40 * Math.max(1, t.runs.length) ? 5 : 9, symbol: 'diamond',
          line: { color: '#fff', width: 1 } },
        hovertemplate: hover('%{customdata}', ' (val)'),
      });
    }
    const alerts = this.alertsAsTrace ? this.alertTrace(runs) : null;
    if (alerts) {
      this.traces.push({ kind: 'alerts' });
      data.push(alerts);
    }
    // The layout's own notes (the "select a run" hint) plus the markers; a later
    // relayout of the markers replaces both, and the hint shows only without runs.
    const m = this.markLayout(runs, view);
    lay.shapes = [...lay.shapes, ...m.shapes];
    lay.annotations = [...lay.annotations, ...m.annotations];
    if (alerts) lay.yaxis2 = { overlaying: 'y', range: [0, 1], visible: false, fixedrange: true };
    this.marksKey = this.marksKeyNow(runs, view);
    Plotly.react(this.div, data, lay, CONFIG);
  }

  // The parent's steps up to the fork step, in the fork's colour (smoothed as the lines are).
  prefixTrace(run, view, hover) {
    const p = run.prefix;
    let y = p[this.spec.key].map(v => (Number.isFinite(v) ? v : null));
    if (this.weight(view) > 0) y = ema(y, this.weight(view)).values;
    const axes = this.axesOf(run);
    return {
      xaxis: axes.x, yaxis: axes.y, uid: uid(run.id, `${this.spec.key}-prefix`), type: 'scatter', mode: 'lines',
      x: p.step, y: this.log ? y.map(positive) : y, name: `${run.name}: its parent before the fork`,
      legendgroup: run.id, showlegend: false, opacity: 0.35, line: { color: run.color, width: 1.5, dash: 'dot' },
      hovertemplate: hover('%{fullData.name}'),
    };
  }

  // Every run's alerts: a small triangle along the top, in the run's color.
  alertTrace(runs) {
    const a = { x: [], color: [], text: [] };
    for (const run of runs) {
      for (const m of run.marks) {
        if (m.kind !== 'alert') continue;
        a.x.push(m.step);
        a.color.push(run.color);
        a.text.push(`${run.name}: ${m.hover}`);
      }
    }
    if (!a.x.length) return null;
    return {
      uid: `alerts-${this.spec.key}`, type: 'scatter', mode: 'markers', x: a.x, y: a.x.map(() => 0.97),
      yaxis: 'y2', name: 'alerts', showlegend: false, cliponaxis: false, text: a.text,
      marker: { symbol: 'triangle-down', size: 8, color: a.color, line: { color: '#fff', width: 0.5 } },
      hovertemplate: '⚠ %{text}<extra></extra>',
    };
  }

  // Same traces: append only what is new.
  extend(view) {
    const idx = [], xs = [], ys = [];
    let val = null;
    this.traces.forEach((t, i) => {
      if (FIXED.has(t.kind)) return;
      if (t.kind === 'val') {
        if (!t.runs.some((run, k) => run.series.valStep.length > t.drawn[k])) return;
        t.added = (t.added ?? 0) + t.runs.reduce((n, run, k) => n + run.series.valStep.length - t.drawn[k], 0);
        if (t.added > VAL_MARKERS) this.key = null; // spread them out again on the next draw
        val = { i, points: this.valPoints(t, t.drawn) };
        t.drawn = t.runs.map(r => r.series.valStep.length);
        return;
      }
      const n = t.run.series.length;
      if (n <= t.drawn) return;
      idx.push(i);
      xs.push(t.run.series.xs(t.drawn));
      ys.push(this.values(t, t.drawn, view));
      t.shown += n - t.drawn;
      t.drawn = n;
    });
    if (val) {
      // One call for the lines and the markers: each extendTraces is a whole redraw.
      const rest = idx.map(() => []);
      Plotly.extendTraces(this.div, {
        x: [...xs, val.points.x], y: [...ys, val.points.y],
        'marker.color': [...rest, val.points.color], customdata: [...rest, val.points.name],
      }, [...idx, val.i]);
    } else if (idx.length) {
      Plotly.extendTraces(this.div, { x: xs, y: ys }, idx);
    }
  }
}
