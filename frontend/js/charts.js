/* global Plotly */
// Plotly figures for the selected runs. Each figure is created once; after
// that a redraw either extends its traces with the points that arrived since
// the last one (Plotly.extendTraces) or, when the set of traces changed,
// replaces them with Plotly.react. Every layout carries a `uirevision` and
// every trace a `uid`, so the person's zoom and legend-hidden traces survive
// both. Updates are coalesced: at most one redraw per LINE_MS, and the two
// figures that are rebuilt whole (layer profile, heatmap) at most one per SLOW_MS.

const LINE_MS = 100;  // ~10 Hz
const SLOW_MS = 400;  // react() of a whole heatmap costs more than an extend
const HEAT_COLUMNS = 600; // steps drawn in the heatmap; more than its width in pixels anyway

const CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'] };
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const GRID = '#eceff3';

// The step-indexed line charts: what each run contributes to each.
const LINE_FIGURES = [
  { id: 'chart-loss', ytitle: 'loss', traces: [{ key: 'loss', x: s => s.step, y: s => s.loss }] },
  {
    id: 'chart-acc', ytitle: 'accuracy', traces: [
      { key: 'acc', x: s => s.step, y: s => s.accuracy },
      // Validation points share the run's legend entry: hiding the run hides both.
      { key: 'val', x: s => s.valStep, y: s => s.valAccuracy, mode: 'markers', suffix: ' (val)', legend: false },
    ],
  },
  { id: 'chart-gnorm', ytitle: 'global grad norm', log: true, traces: [{ key: 'gnorm', x: s => s.step, y: s => s.gnorm }] },
];

const NO_RUNS = 'select a run in the list to plot it';

// `empty`: a message to show instead of axes, or false.
function layout({ xtitle = 'step', ytitle, log = false, empty = false, uirevision = 'keep' }) {
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
    annotations: empty ? [{
      text: empty, showarrow: false,
      xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: { color: '#8b949e', size: 13 },
    }] : [],
  };
}

// A log axis cannot show 0 or negatives; they become gaps like non-finite values.
const positive = v => (v > 0 ? v : null);
const log10 = v => (v > 0 ? Math.log10(v) : null);

// A trace's `uid` ties it to its person-made state (hidden, ...) across
// react(). Plotly also uses it in CSS selectors, so: a letter first, no colons.
const uid = (runId, kind) => `t-${runId.replace(/[^\w-]/g, '_')}-${kind}`;

// Merge the runs' layer-name lists into one order that keeps each run's
// forward order: runs with and without BatchNorm have different parameter
// lists, and a shared name (the same Linear) lines up at the same x.
function mergeOrder(lists) {
  const out = [];
  for (const names of lists) {
    let cursor = 0;
    for (const name of names) {
      const at = out.indexOf(name);
      if (at >= 0) cursor = at + 1;
      else out.splice(cursor++, 0, name);
    }
  }
  return out;
}

export class Charts {
  constructor(doc = document) {
    // One view per selected run: {id, name, color, focused, series}.
    this.runs = [];
    this.heatmapId = null;
    this.lines = LINE_FIGURES.map(spec => ({ spec, div: doc.getElementById(spec.id), key: null, drawn: [] }));
    this.layersDiv = doc.getElementById('chart-layers');
    this.heatDiv = doc.getElementById('chart-heatmap');
    this.layersKey = null;
    this.heatKey = null;
    this.timer = null;
    this.lastLine = 0;
    this.lastSlow = 0;
    for (const fig of this.lines) Plotly.newPlot(fig.div, [], layout({ ...fig.spec, empty: NO_RUNS }), CONFIG);
    Plotly.newPlot(this.layersDiv, [], layout({ xtitle: 'layer (forward order)', ytitle: 'grad norm', log: true, empty: NO_RUNS }), CONFIG);
    Plotly.newPlot(this.heatDiv, [], layout({ ytitle: '', empty: NO_RUNS }), CONFIG);
  }

  setRuns(runs) { this.runs = runs; this.touch(); }

  setHeatmapRun(id) { this.heatmapId = id; this.touch(); }

  // New data or new runs: redraw soon, coalesced with whatever else arrives.
  touch() {
    if (this.timer) return;
    const wait = Math.max(0, this.lastLine + LINE_MS - performance.now());
    // requestAnimationFrame: a hidden tab does not draw at all, and catches
    // up (one extend with every point it missed) when shown again.
    this.timer = setTimeout(() => requestAnimationFrame(() => { this.timer = null; this.draw(); }), wait);
  }

  draw() {
    const now = performance.now();
    this.lastLine = now;
    for (const fig of this.lines) this.drawLine(fig);
    if (now - this.lastSlow >= SLOW_MS) {
      this.lastSlow = now;
      this.drawLayers();
      this.drawHeatmap();
    } else if (this.slowStale()) {
      this.touch(); // come back when the slow figures may draw again
    }
  }

  slowStale() {
    return this.layersKey !== this.layersKeyNow() || this.heatKey !== this.heatKeyNow();
  }

  drawLine(fig) {
    // Kind-major order: validation markers are drawn after (on top of) every line.
    const traces = [];
    for (const t of fig.spec.traces) for (const run of this.runs) traces.push({ run, t });
    const key = traces.map(({ run, t }) =>
      [run.id, t.key, run.name, run.color, run.focused, run.series.version].join('|')).join(';');
    const log = fig.spec.log ? positive : v => v;

    if (key !== fig.key) {
      // The set of traces changed (or a run's buffer was rebuilt): replace them.
      fig.key = key;
      const data = traces.map(({ run, t }) => ({
        uid: uid(run.id, t.key),
        type: 'scatter',
        mode: t.mode ?? 'lines',
        name: run.name + (t.suffix ?? ''),
        legendgroup: run.id,
        showlegend: t.legend ?? true,
        x: t.x(run.series).slice(),
        y: t.y(run.series).map(log),
        line: { color: run.color, width: run.focused ? 2.5 : 1.5 },
        marker: { color: run.color, size: 9, symbol: 'diamond', line: { color: '#fff', width: 1 } },
        hovertemplate: `%{fullData.name}<br>step %{x}<br>${fig.spec.ytitle} %{y:.4g}<extra></extra>`,
      }));
      fig.drawn = data.map(d => d.x.length);
      Plotly.react(fig.div, data, layout({ ...fig.spec, empty: !data.length && NO_RUNS }), CONFIG);
      return;
    }
    // Same traces: append only what is new.
    const idx = [], xs = [], ys = [];
    traces.forEach(({ run, t }, i) => {
      const x = t.x(run.series);
      if (x.length <= fig.drawn[i]) return;
      idx.push(i);
      xs.push(x.slice(fig.drawn[i]));
      ys.push(t.y(run.series).slice(fig.drawn[i]).map(log));
      fig.drawn[i] = x.length;
    });
    if (idx.length) Plotly.extendTraces(fig.div, { x: xs, y: ys }, idx);
  }

  layersKeyNow() {
    return this.runs.map(r => [r.id, r.name, r.color, r.focused, r.series.length, r.series.version].join('|')).join(';');
  }

  // Per-layer gradient norm at each run's latest step: the picture of
  // vanishing (falling to the left) or exploding (rising) gradients.
  drawLayers() {
    const key = this.layersKeyNow();
    if (key === this.layersKey) return;
    this.layersKey = key;
    const runs = this.runs.filter(r => r.series.layers.length && r.series.length);
    const order = mergeOrder(runs.map(r => r.series.layers.map(l => l.name)));
    const data = runs.map(run => {
      const s = run.series;
      const grad = s.lastGrad();
      return {
        uid: uid(run.id, 'layers'),
        type: 'scatter',
        mode: 'lines+markers',
        name: `${run.name} @ step ${s.lastStep()}`,
        x: s.layers.map(l => l.name),
        y: s.layers.map((_, i) => positive(grad[i])),
        customdata: s.layers.map(l => `${l.module} ${JSON.stringify(l.shape)}`),
        line: { color: run.color, width: run.focused ? 2.5 : 1.5 },
        marker: { color: run.color, size: 5 },
        hovertemplate: '%{x} (%{customdata})<br>grad norm %{y:.3g}<extra>%{fullData.name}</extra>',
      };
    });
    const empty = !data.length && (this.runs.length ? 'no steps recorded yet' : NO_RUNS);
    const lay = layout({ xtitle: 'layer (forward order)', ytitle: 'grad norm', log: true, empty });
    // Deep nets have 50+ parameters: let Plotly thin the labels (every point keeps its hover name).
    Object.assign(lay.xaxis, {
      type: 'category', categoryorder: 'array', categoryarray: order, tickangle: -35, nticks: 24, tickfont: { size: 10 },
    });
    Plotly.react(this.layersDiv, data, lay, CONFIG);
  }

  heatRun() {
    return this.runs.find(r => r.id === this.heatmapId) ?? null;
  }

  heatKeyNow() {
    const run = this.heatRun();
    return run ? [run.id, run.series.length, run.series.version].join('|') : '';
  }

  // Layer x step grid of log10 gradient norms for one run. Rebuilt whole; at
  // most HEAT_COLUMNS steps (evenly spaced, latest kept) so its cost is bounded.
  drawHeatmap() {
    const key = this.heatKeyNow();
    if (key === this.heatKey) return;
    this.heatKey = key;
    const run = this.heatRun();
    const s = run?.series;
    if (!s || !s.layers.length || !s.length) {
      const empty = run ? `no steps recorded for ${run.name} yet` : NO_RUNS;
      Plotly.react(this.heatDiv, [], layout({ ytitle: '', empty }), CONFIG);
      return;
    }
    const n = s.length;
    const stride = Math.ceil(n / HEAT_COLUMNS);
    const x = [];
    const z = s.layers.map(() => []); // z[layer][column]
    const add = i => {
      x.push(s.step[i]);
      const row = s.grad[i];
      for (let l = 0; l < z.length; l++) z[l].push(log10(row[l]));
    };
    for (let i = 0; i < n; i += stride) add(i);
    if ((n - 1) % stride) add(n - 1);
    const data = [{
      uid: 'heatmap',
      type: 'heatmap',
      x,
      y: s.layers.map(l => l.name),
      z,
      colorscale: 'Viridis',
      hoverongaps: false,
      colorbar: { title: { text: 'log₁₀ grad norm', side: 'right' }, thickness: 12, outlinewidth: 0 },
      hovertemplate: 'step %{x}<br>%{y}<br>log₁₀ grad norm %{z:.2f}<extra></extra>',
    }];
    // Changing the run resets the zoom; new steps of the same run keep it.
    const lay = layout({ ytitle: '', uirevision: run.id });
    lay.showlegend = false;
    Object.assign(lay.yaxis, { type: 'category', autorange: 'reversed', title: { text: '' } });
    if (x.length <= 10) lay.xaxis.dtick = 1; // no "step 1.5" ticks on a run's first steps
    Plotly.react(this.heatDiv, data, lay, CONFIG);
  }
}
