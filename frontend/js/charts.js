/* global Plotly */
// Every figure of the page and when to draw it. Updates are coalesced: new
// data only marks figures stale; drawing happens in animation frames, one
// figure after another within a small time budget per frame (so a live page
// never holds up a frame with all of its figures at once), the one waiting
// longest first, each at most every `minMs`. Drawing is paced as a whole:
// after a draw that took c ms the next waits IDLE_RATIO x c (and a long draw
// at least SLOW_GAP_MS), so redraws never take more than about a third of the
// main thread however many figures and runs there are (they come less often
// instead). A figure scrolled out of view is not drawn at all; it catches up
// when it comes back.

import { LINE_SPECS, LineFigure } from './lines.js';
import { PROFILE_SPECS, ProfileFigure } from './profiles.js';
import { HeatmapFigure } from './heatmap.js';
import { MultiplesFigure } from './multiples.js';
import { emptyNote, near, xOfRelayout } from './plot.js';

const LINE_MS = 100;   // ~10 Hz
const SLOW_MS = 400;   // figures rebuilt whole (profiles, the small multiples)
const FRAME_BUDGET_MS = 12;
const IDLE_RATIO = 2;    // idle time after a draw, per ms of drawing
// A draw longer than CHEAP_MS, with the frame's own style and paint, misses the
// next frame but one (a 50 ms frame): such draws start at most every SLOW_GAP_MS,
// so they stay under 3% of the frames (smooth scrolling and hovering), and the
// charts update less often instead. A Plotly line chart's redraw is ~30 ms on the
// 2-core VM when quiet and 40-60 ms beside four runs training (issue 14): there,
// 400 ms put 4-5% of frames at 50 ms, the p95 line.
const CHEAP_MS = 20;
const SLOW_GAP_MS = 600;
// What a figure out of view says until it is first drawn with runs (it is not
// drawn yet; "select a run" would be wrong).
const NOT_YET = 'drawn when scrolled into view';

export class Charts {
  constructor(api, doc = document) {
    this.runs = [];   // [{id, name, color, focused, series, marks, marksKey}], the selected runs
    // xrange: the steps every step chart shows, [a, b] or null for all (main.js resolves it).
    this.view = { smooth: 0.6, scale: 'auto', step: null, heatRun: null, stat: 'grad_norm', layers: 'weights',
      relative: false, xrange: null, filter: '', agg: 'none', open: [] };
    this.onX = () => {}; // the person zoomed (or double-clicked) a step chart: [a, b], or 'full'
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
    // The same runs, with one of their series' parts as the series (the every-stats_every-steps statistics).
    const part = key => () => this.runs.map(r => ({ ...r, series: r.series[key] }));
    const group = () => this.runs.filter(r => this.groupIds.has(r.id));
    const line = fig => ({ fig, name: fig.spec.name, runs: fig.spec.source ? part(fig.spec.source) : all, minMs: LINE_MS });
    this.jobs = [ // in page order, which is the order of urgent draws
      ...this.lines.filter(fig => !fig.spec.source).map(line),
      ...this.profiles.map(fig => ({ fig, name: fig.spec.name, runs: all, minMs: SLOW_MS })),
      { fig: this.heatmap, name: 'heatmap', runs: all, minMs: SLOW_MS },
      ...this.lines.filter(fig => fig.spec.source).map(line),
      { fig: this.multiples, name: 'group', runs: group, minMs: SLOW_MS },
    ].map((job, rank) => ({ ...job, rank, last: -Infinity, cost: 0, draws: 0, visible: true }));
    this.paceUntil = 0;
    for (const job of this.jobs) job.fig.requestDraw = () => this.touch();
    // Linked x axes: zooming one step chart (everything but the per-layer profiles) sets the
    // steps of all of them, through the page state.
    for (const fig of [...this.lines, this.heatmap, this.multiples]) {
      fig.div.on('plotly_relayout', ev => this.zoomed(ev));
    }
    // A click on a block's row (heatmap) or point (profiles) opens or closes that block.
    this.onOpen = () => {};
    for (const fig of [...this.profiles, this.heatmap]) {
      fig.div.on('plotly_click', ev => {
        const p = ev?.points?.[0];
        const block = p && fig.blockAt(fig === this.heatmap ? p.y : p.x);
        if (block) this.onOpen(block);
      });
    }
    this.watchVisibility();
  }

  // A relayout of a step chart: the person's zoom, pan or double-click, or our own
  // relayout to the steps asked for (ignored: it is what the view says already).
  zoomed(ev) {
    const x = xOfRelayout(ev);
    if (x === undefined) return;
    const shown = this.view.xrange ?? null;
    if (x === 'full' ? shown === null : near(x, shown)) return;
    this.onX(x);
  }

  // Figures out of view are skipped (they are drawn as they scroll in).
  watchVisibility() {
    if (typeof IntersectionObserver === 'undefined') return;
    const byDiv = new Map(this.jobs.map(j => [j.fig.div, j]));
    const io = new IntersectionObserver(entries => {
      for (const e of entries) {
        const job = byDiv.get(e.target);
        if (job) job.visible = e.isIntersecting;
      }
      this.touch();
    }, { rootMargin: '40px 0px' });
    for (const div of byDiv.keys()) io.observe(div);
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
    const paced = start < this.paceUntil;
    for (const job of this.jobs) {
      if (!job.visible) {
        if (!job.draws && !job.noted && job.runs().length) {
          job.noted = true;
          Plotly.relayout(job.fig.div, { annotations: [emptyNote(NOT_YET)] });
        }
        continue;
      }
      const runs = job.runs();
      if (!job.fig.stale(runs, this.view)) {
        const wake = job.fig.dueIn?.(runs, this.view);
        if (wake != null) wait = Math.min(wait, wake);
        continue;
      }
      // What the person just asked for (a run ticked, a setting) is not paced, and goes first.
      const urgent = Boolean(job.fig.urgent?.(runs, this.view));
      if (paced && !urgent) {
        wait = Math.min(wait, this.paceUntil - start);
        continue;
      }
      const ready = urgent ? start : job.last + job.minMs;
      if (ready <= start) due.push({ job, runs, urgent });
      else wait = Math.min(wait, ready - start);
    }
    // Urgent ones in page order (loss, accuracy and gradient norm first), then the longest waiting.
    due.sort((a, b) => b.urgent - a.urgent || (a.urgent ? a.job.rank - b.job.rank : a.job.last - b.job.last));
    for (const [i, { job, runs }] of due.entries()) {
      if (i > 0 && performance.now() - start > FRAME_BUDGET_MS) { wait = 0; break; }
      const t0 = performance.now();
      job.fig.draw(runs, this.view);
      const t1 = performance.now();
      job.cost = job.cost ? 0.7 * job.cost + 0.3 * (t1 - t0) : t1 - t0;
      job.last = t0;
      job.draws++;
      this.noteDrawn(job, runs, t1);
    }
    const busy = performance.now() - start;
    if (due.length) {
      const idle = busy < CHEAP_MS ? IDLE_RATIO * busy : Math.max(IDLE_RATIO * busy, SLOW_GAP_MS - busy);
      this.paceUntil = performance.now() + idle;
      wait = Math.min(wait, idle);
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
