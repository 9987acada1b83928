// Small multiples of an ablation group: one loss panel per cell, laid out as
// the grid of what was varied (BatchNorm off/on down, L2 across), all on the
// same axes so the cells compare at a glance. One Plotly figure with a
// subplot grid; the line logic (extend, smoothing, markers) is LineFigure's.

import { LineFigure } from './lines.js';
import { FONT, NO_RUNS, layout, emptyNote, setX } from './plot.js';
import { markLayout } from './markers.js';

const axisName = (kind, k) => (k === 1 ? kind : `${kind}${k}`);

export class MultiplesFigure extends LineFigure {
  constructor(div) {
    super(div, { id: div.id, name: 'group-loss', ytitle: 'loss', key: 'loss', smooth: true, scaleToggle: true });
    this.alertsAsTrace = false; // ticks (shapes) in each panel instead
    this.cells = [];          // [{runId, title, panel (1-based)}]
    this.grid = { rows: 1, cols: 1 };
    this.labelRoom = 12; // no axis title
  }

  // cells: [{runId, title, panel}]; grid: {rows, cols}. Drawn on the next draw().
  setCells(cells, grid) {
    this.cells = cells;
    this.grid = grid;
  }

  panelOf(runId) {
    return this.cells.find(c => c.runId === runId)?.panel ?? 1;
  }

  axesOf(run) {
    const k = this.panelOf(run.id);
    return { x: axisName('x', k), y: axisName('y', k) };
  }

  traceKey(runs, view, data = true) {
    return `${this.grid.rows}x${this.grid.cols}|${this.cells.map(c => `${c.runId}@${c.panel}:${c.title}`).join(',')}|`
      + super.traceKey(runs, view, data);
  }

  baseLayout(runs, view) {
    const { rows, cols } = this.grid;
    const lay = layout({ ytitle: '', log: this.log, empty: false });
    Object.assign(lay, {
      showlegend: false,
      margin: { l: 50, r: 10, t: 22, b: 34 },
      grid: { rows, columns: cols, pattern: 'independent', xgap: 0.08, ygap: 0.22 },
    });
    const n = rows * cols;
    for (let k = 1; k <= n; k++) {
      // The same scales everywhere: small multiples compare by position.
      lay[axisName('xaxis', k)] = setX({
        ...lay.xaxis, title: { text: '' }, matches: k > 1 ? 'x' : undefined, visible: true,
      }, view.xrange ?? null);
      // autorange said, not left to the default: matched axes whose type changes (linear -> log
      // when the loss comes to span 3 decades) otherwise keep Plotly's empty-axis range [-1, 4].
      lay[axisName('yaxis', k)] = {
        ...lay.yaxis, title: { text: '' }, matches: k > 1 ? 'y' : undefined, visible: true, autorange: true,
      };
    }
    if (!this.cells.length) lay.annotations = [emptyNote(NO_RUNS)];
    return lay;
  }

  // Panel titles (each in its run's color) and each cell's markers in its panel.
  markLayout(runs) {
    const shapes = [];
    const annotations = [];
    const byId = new Map(runs.map(r => [r.id, r]));
    for (const cell of this.cells) {
      const run = byId.get(cell.runId);
      const x = axisName('x', cell.panel), y = axisName('y', cell.panel);
      annotations.push({
        text: cell.title + (run ? '' : ' (not shown)'), showarrow: false,
        xref: `${x} domain`, yref: `${y} domain`, x: 0, y: 1, xanchor: 'left', yanchor: 'bottom', yshift: 2,
        font: { family: FONT, size: 11, color: run?.color ?? '#8b949e' }, name: 'panel-title',
      });
      if (!run) continue;
      const m = markLayout(run.marks, run.color, { xref: x, yref: `${y} domain`, small: true });
      shapes.push(...m.shapes);
      annotations.push(...m.annotations);
    }
    return { shapes, annotations };
  }

  marksKeyNow(runs, view) {
    return this.cells.map(c => `${c.runId}@${c.panel}`).join(',') + '|' + super.marksKeyNow(runs, { ...view, step: null });
  }
}
