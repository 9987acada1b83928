// What a line chart draws of a long series: at most a few points per pixel column. Plotly redraws
// every point of every trace on each live update, so a run's thousands of steps would make each
// redraw slower as it trains; spikes are the point of the charts, so a column keeps its lowest and
// its highest value (in step order), never an average. No DOM.

// Indices of the points of (x, y) to draw, in order: with `cols` equal columns of steps over
// [lo, hi] (extended at the same width past both ends), each column's lowest and highest y, the
// first gap (null) in it, and the series' first and last point. All of them when there are at
// most 2 x cols points. x ascending; y numbers or null.
export function decimateIndices(x, y, lo, hi, cols) {
  const n = x.length;
  if (n <= 2 * cols || !(hi > lo)) return null;
  const width = (hi - lo) / cols;
  const keep = [];
  let col = NaN, min = -1, max = -1, gap = -1;
  const flush = () => {
    const picked = [min, max, gap].filter(i => i >= 0).sort((a, b) => a - b);
    for (const i of picked) if (keep[keep.length - 1] !== i) keep.push(i);
  };
  for (let i = 0; i < n; i++) {
    const c = Math.floor((x[i] - lo) / width);
    if (c !== col) {
      if (i > 0) flush();
      col = c; min = max = gap = -1;
    }
    const v = y[i];
    if (v == null || !Number.isFinite(v)) {
      if (gap < 0) gap = i;
    } else {
      if (min < 0 || v < y[min]) min = i;
      if (max < 0 || v > y[max]) max = i;
    }
  }
  flush();
  if (keep[0] !== 0) keep.unshift(0);
  if (keep[keep.length - 1] !== n - 1) keep.push(n - 1);
  return keep;
}

// x and y thinned to decimateIndices' points (the same arrays when nothing is dropped).
export function decimate(x, y, lo, hi, cols) {
  const keep = decimateIndices(x, y, lo, hi, cols);
  if (!keep) return { x, y };
  return { x: keep.map(i => x[i]), y: keep.map(i => y[i]) };
}
