// Every figure of the page and when to draw it. Updates are coalesced: new
// data only marks figures stale; drawing happens in animation frames, one
// figure after another within a small time budget per frame (so a live page
// never holds up a frame with all of its figures at once), each figure at
// most every `minMs` and never more often than four times its own drawing
// cost (so a slow figure cannot take more than a fifth of the main thread).

import { LINE_SPECS, LineFigure } from './lines.js';
import { PROFILE_SPECS, ProfileFigure } from './profiles.js';
import { HeatmapFigure } from './heatmap.js';
import { MultiplesFigure } from './multiples.js';

const LINE_MS = 100;   // ~10 Hz
const SLOW_MS = 400;   // figures rebuilt whole (profiles, the small multiples)
const FRAME_BUDGET_MS = 12;

export class Charts {
  constructor(api, doc = document) {
    this.runs = [];   // [{id, name, color, focused, series, marks, marksKey}], the selected runs
    this.view = { smooth: 0.6, scale: 'linear', step: null, heatRun: null, stat: 'grad_norm' };
    this.raf = null;
    this.timer = null;
    this.firstDrawn = new Map(); // run id -> {figure name: time it was first drawn with points}
    const byId = id => doc.getElementById(id);
    this.lines = LINE_SPECS.map(spec => new LineFigure(byId(spec.id), spec));
    this.profiles = PROFILE_SPECS.map(spec => new ProfileFigure(byId(spec.id), spec));
    this.heatmap = new HeatmapFigure(byId('chart-heatmap'), api, () => this.touch());
    this.multiples = new MultiplesFigure(byId('chart-group'));
    this.groupIds = new Set();
    const all = () => this.runs;
    const group = () => this.runs.filter(r => this.groupIds.has(r.id));
    this.jobs = [
      ...this.lines.map(fig => ({ fig, name: fig.spec.name, runs: all, minMs: LINE_MS })),
      ...this.profiles.map(fig => ({ fig, name: fig.spec.name, runs: all, minMs: SLOW_MS })),
      { fig: this.heatmap, name: 'heatmap', runs: all, minMs: SLOW_MS },
      { fig: this.multiples, name: 'group', runs: group, minMs: SLOW_MS },
    ].map(job => ({ ...job, last: -Infinity, cost: 0 }));
  }

  // Every figure by its PNG name, for the download buttons.
  figure(div) {
    return this.jobs.find(j => j.fig.div === div)?.fig ?? null;
  }

  setRuns(runs) { this.runs = runs; this.touch(); }

  setView(patch) { this.view = { ...this.view, ...patch }; this.touch(); }

  // The group's cells ([{runId, title, panel}]) and grid, or none.
  setGroup(cells, grid) {
    this.groupIds = new Set(cells.map(c => c.runId));
    this.multiples.setCells(cells, grid);
    this.touch();
  }

  // New data or new runs: draw soon.
  touch() {
    if (this.raf) return;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    // requestAnimationFrame: a hidden tab does not draw at all, and catches
    // up (one extend with every point it missed) when shown again.
    this.raf = requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.raf = null;
    const start = performance.now();
    let wait = Infinity;
    const due = [];
    for (const job of this.jobs) {
      const runs = job.runs();
      if (!job.fig.stale(runs, this.view)) {
        const wake = job.fig.dueIn?.(runs, this.view);
        if (wake != null) wait = Math.min(wait, wake);
        continue;
      }
      const ready = job.last + Math.max(job.minMs, job.cost * 4);
      if (ready <= start) due.push({ job, runs });
      else wait = Math.min(wait, ready - start);
    }
    due.sort((a, b) => a.job.last - b.job.last); // the longest waiting first
    for (const [i, { job, runs }] of due.entries()) {
      if (i > 0 && performance.now() - start > FRAME_BUDGET_MS) { wait = 0; break; }
      const t0 = performance.now();
      job.fig.draw(runs, this.view);
      const t1 = performance.now();
      job.cost = job.cost ? 0.7 * job.cost + 0.3 * (t1 - t0) : t1 - t0;
      job.last = t0;
      this.noteDrawn(job, runs, t1);
    }
    if (wait === 0) this.touch();
    else if (wait < Infinity) this.timer = setTimeout(() => { this.timer = null; this.touch(); }, wait);
  }

  // When each run was first drawn with data on each figure (the benchmark's
  // "history drawn" clock reads this).
  noteDrawn(job, runs, t) {
    for (const run of runs) {
      if (!run.series.length) continue;
      let seen = this.firstDrawn.get(run.id);
      if (!seen) this.firstDrawn.set(run.id, (seen = {}));
      if (job.fig === this.heatmap && job.fig.have?.id !== run.id) continue;
      if (!(job.name in seen)) seen[job.name] = t;
    }
  }

  forget(id) { this.firstDrawn.delete(id); }
}
