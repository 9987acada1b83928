// frontend/js/heatmap.js's columnsX under `node --test`: the heatmap's columns are drawn on an
// even grid (Plotly's fast path) only when every bucket's middle step is within a tenth of a
// column of it, checked against buckets made the server's way (server/routes/runs.py heatmap).
import test from 'node:test';
import assert from 'node:assert/strict';
import { EVEN_TOLERANCE, columnsX } from '../../frontend/js/heatmap.js';

// The server's buckets of `steps` (the run's stored steps, in order): np.unique(np.linspace(0, n,
// num=min(n, k), endpoint=False).astype(int)) as starts, each ending before the next.
function buckets(steps, k) {
  const n = steps.length, m = Math.min(n, k);
  const starts = [...new Set(Array.from({ length: m }, (_, i) => Math.floor((i * n) / m)))];
  const ends = starts.map((s, i) => (i + 1 < starts.length ? starts[i + 1] : n) - 1);
  return { start: starts.map(i => steps[i]), end: ends.map(i => steps[i]) };
}
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const evenlySpaced = xs => xs.every((x, i) => i < 2 || Math.abs(x - xs[i - 1] - (xs[1] - xs[0])) < 1e-9 * Math.abs(xs[1] - xs[0]));

test('20k steps in 499 columns: an even grid within a tenth of a column of every middle', () => {
  const { start, end } = buckets(range(1, 20_000), 499);
  const x = columnsX(start, end);
  assert.equal(x.length, start.length);
  assert.ok(evenlySpaced(x));
  const dx = x[1] - x[0];
  let worst = 0;
  for (const [b, s] of start.entries()) worst = Math.max(worst, Math.abs(x[b] - (s + end[b]) / 2));
  assert.ok(worst > 0 && worst <= EVEN_TOLERANCE * dx, `worst ${worst} of a column ${dx}`);
  assert.equal(x[0], (start[0] + end[0]) / 2);
  assert.equal(x.at(-1), (start.at(-1) + end.at(-1)) / 2);
});

test('one step per column is its own grid; 2000 steps in 499 columns (a step is a quarter column) keep their middles', () => {
  const one = buckets(range(1, 300), 499);
  assert.deepEqual(columnsX(one.start, one.end), range(1, 300));
  const short = buckets(range(1, 2000), 499);
  const x = columnsX(short.start, short.end);
  assert.deepEqual(x, short.start.map((s, b) => (s + short.end[b]) / 2));
  assert.ok(!evenlySpaced(x));
});

test('a run whose steps are not even (every step, then every 10th) keeps the middles of its buckets', () => {
  const steps = [...range(1, 5000), ...range(1, 5000).map(s => 5000 + 10 * s)];
  const { start, end } = buckets(steps, 499);
  assert.deepEqual(columnsX(start, end), start.map((s, b) => (s + end[b]) / 2));
});
