/* global Plotly */
// Layer x step heatmap of one run, from the server's min/max buckets
// (GET /api/runs/{id}/heatmap): each column is a span of steps colored by its
// maximum, so a one-step spike keeps its full value at any zoom. Refetched
// when the run or statistic changes, and
// every REFRESH_MS while the run grows.

import { CONFIG, NO_RUNS, layout } from './plot.js';
import { markLayout } from './markers.js';
import { HEATMAP_STATS } from './state.js';

const REFRESH_MS = 2000;
const TITLES = Object.fromEntries(HEATMAP_STATS.map(s => [s.key, s.title]));
const LINEAR = new Set(HEATMAP_STATS.filter(s => s.linear).map(s => s.key));

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

  keyNow(run, stat) {
    return run ? [run.id, stat, run.name, run.marksKey, this.have?.step, this.have?.id, this.have?.stat, this.failed].join('|') : `none|${stat}`;
  }

  // The figure is waiting for a fetch, or shows something else than asked.
  stale(runs, view) {
    const run = runs.find(r => r.id === view.heatRun) ?? null;
    return (!this.fetching && this.needsFetch(run, view.stat)) || this.keyNow(run, view.stat) !== this.key;
  }

  // Another run or statistic than the one shown: the person is waiting for it.
  urgent(runs, view) {
    return this.shown !== `${view.heatRun}|${view.stat}`;
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
    const key = this.keyNow(run, stat);
    if (key === this.key) return;
    const h = this.have;
    const current = run && h && h.id === run.id && h.stat === stat;
    if (run && !current) return; // keep the old picture until the new one lands
    this.key = key;
    this.shown = `${view.heatRun}|${stat}`;
    const body = this.body;
    if (!run || this.failed || !body?.step_start?.length || !body.layers?.length) {
      const empty = !run ? NO_RUNS : this.failed ?? `no steps recorded for ${run.name} yet`;
      Plotly.react(this.div, [], layout({ ytitle: '', empty }), CONFIG);
      return;
    }
    Plotly.react(this.div, [this.trace(body, stat)], this.layoutFor(run, body), CONFIG);
  }

  trace(body, stat) {
    const nl = body.layers.length;
    const nb = body.step_start.length;
    const x = body.step_start.map((s, b) => (s + body.step_end[b]) / 2);
    const z = [], maxes = [];
    for (let l = 0; l < nl; l++) {
      const zr = new Array(nb), mr = new Array(nb);
      for (let b = 0; b < nb; b++) {
        const max = body.max[b][l];
        zr[b] = LINEAR.has(stat) ? max : (max > 0 ? Math.log10(max) : null);
        mr[b] = max;
      }
      z.push(zr);
      maxes.push(mr);
    }
    const title = TITLES[stat] ?? stat;
    const span = nb > 1 ? Math.round((body.step_end[nb - 1] - body.step_start[0] + 1) / nb) : 1;
    return {
      uid: 'heatmap', type: 'heatmap', x, y: body.layers.map(l => l.name), z, customdata: maxes,
      colorscale: 'Viridis', hoverongaps: false,
      ...(LINEAR.has(stat) ? { zmin: 0, zmax: 1 } : {}),
      colorbar: { title: { text: `${LINEAR.has(stat) ? '' : 'log₁₀ '}${title}<br>(bucket max)`, side: 'right' },
        thickness: 12, outlinewidth: 0 },
      hovertemplate: `step %{x:.0f}${span > 1 ? ` (±${Math.ceil(span / 2)})` : ''}<br>%{y}<br>`
        + `${title}: max %{customdata:.3g}<extra></extra>`,
    };
  }

  layoutFor(run, body) {
    // Changing the run resets the zoom; new steps of the same run keep it.
    const lay = layout({ ytitle: '', uirevision: run.id });
    lay.showlegend = false;
    Object.assign(lay.yaxis, { type: 'category', autorange: 'reversed', title: { text: '' } });
    if (body.step_end[body.step_end.length - 1] <= 10) lay.xaxis.dtick = 1; // no "step 1.5" ticks
    const m = markLayout(run.marks, run.color);
    lay.shapes = m.shapes;
    lay.annotations = m.annotations;
    return lay;
  }
}
