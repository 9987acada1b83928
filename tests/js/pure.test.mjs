// The page's pure modules (no DOM) under `node --test`: each rule checked against
// a reference computed here, the plain way. tests/test_js_units.py runs this in
// `make test`; `node --test tests/js/` runs it alone in well under a second.
import test from 'node:test';
import assert from 'node:assert/strict';
import * as diag from '../../frontend/js/diagnosis.js';
import { PALETTE, assignColors, distance, hashColor } from '../../frontend/js/colors.js';
import { ema } from '../../frontend/js/smooth.js';
import { DEFAULTS, formatState, parseState } from '../../frontend/js/state.js';
import { RunSeries } from '../../frontend/js/series.js';
import { decimate, decimateIndices } from '../../frontend/js/decimate.js';

// A small deterministic generator (xorshift32), so the property checks are the same each run.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 2 ** 32; };
}
const hexId = r => Array.from({ length: 8 }, () => '0123456789abcdef'[Math.floor(r() * 16)]).join('');

test('ema: debiased, gaps stay gaps, and continuing from a state equals one pass', () => {
  const values = [3, null, 5, NaN, 1, 8, 2];
  const w = 0.6;
  // The reference: the textbook debiased EMA over the finite values only.
  let last = 0, n = 0;
  const want = values.map(v => {
    if (v == null || !Number.isFinite(v)) return null;
    last = w * last + (1 - w) * v; n++;
    return last / (1 - w ** n);
  });
  const whole = ema(values, w).values;
  whole.forEach((v, i) => (want[i] === null ? assert.equal(v, null) : assert.ok(Math.abs(v - want[i]) < 1e-12)));
  assert.ok(Math.abs(whole[0] - 3) < 1e-12, 'the first point is its own value, not pulled to 0');
  const a = ema(values.slice(0, 3), w);
  const b = ema(values.slice(3), w, a.state);
  assert.deepEqual([...a.values, ...b.values], whole);
});

test('colors: a run keeps its color whatever else is shown, and selected runs look apart', () => {
  const r = rng(7);
  for (let trial = 0; trial < 200; trial++) {
    const runs = Array.from({ length: 2 + Math.floor(r() * 12) }, (_, i) => ({ id: hexId(r), created: i }));
    const k = Math.min(runs.length, 1 + Math.floor(r() * PALETTE.length));
    const selected = runs.slice(0, k).map(run => run.id);
    const colors = assignColors(runs, selected);
    assert.equal(colors.size, runs.length);
    for (const run of runs) assert.ok(PALETTE.includes(colors.get(run.id)));
    // Unselected runs: their own hash color.
    for (const run of runs.slice(k)) assert.equal(colors.get(run.id), hashColor(run.id));
    // Selected runs (no more than the palette holds): all different.
    const chosen = selected.map(id => colors.get(id));
    assert.equal(new Set(chosen).size, chosen.length, `duplicate colors among ${chosen}`);
    // The oldest selected run always keeps its hash color.
    assert.equal(colors.get(selected[0]), hashColor(selected[0]));
    // Same input, same answer.
    assert.deepEqual([...assignColors(runs, selected)], [...colors]);
  }
  assert.equal(distance('#000000', '#000000'), 0);
  assert.ok(distance('#4e79a7', '#e15759') > distance('#4e79a7', '#499894'));
});

test('notLearning: ended runs within the margin of chance, and only those', () => {
  const run = (status, val, n, extra = {}) => ({ status, summary: { val_accuracy: val, n_classes: n, ...extra } });
  for (const [status, val, n, want] of [
    ['completed', 0.1, 10, true], ['completed', 0.1 + diag.CHANCE_MARGIN - 1e-9, 10, true],
    ['completed', 0.1 + diag.CHANCE_MARGIN + 1e-6, 10, false], ['stopped', 0.52, 2, true],
    ['running', 0.1, 10, false], ['diverged', 0.1, 10, false], ['failed', 0.1, 10, false],
    ['completed', 0.9, 10, false], ['completed', undefined, 10, false], ['completed', 0.1, undefined, false],
    ['completed', 0.5, 1, false],
  ]) {
    const got = diag.notLearning(run(status, val, n));
    assert.equal(got !== null, want, `${status} ${val} ${n}`);
    if (want) assert.ok(Math.abs(got.chance - 1 / n) < 1e-15 && got.val === val);
  }
  assert.equal(diag.notLearning(run('completed', 0.1, 10, { diverged_step: 12 })), null);
  assert.equal(diag.notLearning(null), null);
});

test('earlyBlowUp and blowUpRange: the span around blow-ups in the first fifth', () => {
  const dv = (step, since, planned) => ({ status: 'diverged', config: { steps: planned },
    summary: { diverged_step: step, ...(since == null ? {} : { diverged_since: since }) } });
  assert.deepEqual(diag.earlyBlowUp(dv(40, 30, 200)), { since: 30, step: 40, from: 25, to: 42 });
  assert.deepEqual(diag.earlyBlowUp(dv(3, null, 200)), { since: 3, step: 3, from: 0, to: 5 });
  assert.deepEqual(diag.earlyBlowUp(dv(10, 50, 200)).since, 10, 'since never after the non-finite step');
  assert.equal(diag.earlyBlowUp(dv(41, 30, 200)), null, 'past the first fifth');
  assert.equal(diag.earlyBlowUp({ ...dv(10, 5, 200), status: 'completed' }), null);
  assert.equal(diag.blowUpRange([{ status: 'completed' }]), null);
  assert.deepEqual(diag.blowUpRange([dv(40, 30, 200), dv(12, 10, 100), { status: 'running' }]), [5, 42]);
});

test('autoLog: more than LOG_DECADES decades, or a diverged run', () => {
  assert.equal(diag.autoLog(1, 10 ** diag.LOG_DECADES, false).log, false);
  const wide = diag.autoLog(1e-3, 10 ** diag.LOG_DECADES, false);
  assert.equal(wide.log, true);
  assert.match(wide.why, /6\.0 decades/);
  assert.equal(diag.autoLog(Infinity, -Infinity, false).log, false, 'nothing seen yet');
  assert.deepEqual(diag.autoLog(1, 2, true), { log: true, why: 'a run diverged' });
});

test('alertEpisodes: ordered by step, each joined to its own end', () => {
  const alerts = [
    { episode: 2, step: 50, kind: 'grad_spike', layer: 'b', value: 9, baseline: 1, ratio: 9 },
    { episode: 1, step: 10, kind: 'loss_spike', value: 5, median: 1, ratio: 5, top: [{ layer: 'a', ratio: 5 }] },
    { step: 10, kind: 'explosion' },
  ];
  const ends = [{ episode: 1, step: 14, peak_step: 12 }, { episode: 3, step: 99 }];
  const got = diag.alertEpisodes(alerts, ends);
  assert.deepEqual(got.map(e => [e.step, e.kind]), [[10, 'loss_spike'], [10, 'explosion'], [50, 'grad_spike']]);
  assert.equal(got[0].end.peak_step, 12);
  assert.equal(got[0].baseline, 1, 'an older alert\'s median is its baseline');
  assert.equal(got[1].end, null);
  assert.equal(got[1].episode, null);
  assert.equal(got[2].end, null, 'episode 2 has not ended');
});

test('state: what formatState writes, parseState reads back; other parameters are kept', () => {
  const state = { ...DEFAULTS, selected: ['ab12cd34', 'ef56ab78'] };
  const search = formatState(state, '?token=keep-me');
  assert.match(search, /runs=ab12cd34,ef56ab78/);
  assert.match(search, /token=keep-me/);
  const back = parseState(search);
  assert.deepEqual(back.state, state);
  assert.equal(back.explicit.selected, true);
  assert.equal(parseState('').explicit.selected, false);
  // Defaults are not written: a fresh state is just its (empty) selection.
  assert.equal(formatState({ ...DEFAULTS, selected: [] }, ''), '?runs=');
});

test('RunSeries: live events and history land in the same columns; thinning keeps first and last', () => {
  const s = new RunSeries('r1', 64);
  s.addEvent({ type: 'run.started', layers: [{ name: 'a.weight' }, { name: 'b.weight' }] });
  const steps = 300;
  for (let i = 0; i < steps; i++) {
    s.addEvent({ type: 'metrics', step: i, loss: i === 7 ? null : 1 / (i + 1), accuracy: 0.5,
      global_grad_norm: i, grad_norm: [i, 2 * i], weight_norm: [1, 1], update_ratio: [0.1, 0.2],
      ...(i < 150 ? { lr: 1 / (i + 2) } : {}) });  // a run may stop reporting its lr (or never)
  }
  assert.equal(s.received, steps);
  assert.ok(s.length <= 64, `thinned to ${s.length}`);
  const xs = s.xs();
  assert.equal(xs[0], 0);
  assert.equal(xs[xs.length - 1], steps - 1);
  assert.ok(xs.every((x, i) => i === 0 || x > xs[i - 1]), 'steps stay in order');
  // Every kept row is the row of its step (no column shifted against another).
  const loss = s.ys('loss');
  xs.forEach((x, i) => assert.equal(loss[i], x === 7 ? null : 1 / (x + 1)));
  const grad = s.stats.grad_norm;
  xs.forEach((x, i) => assert.deepEqual(Array.from(grad.row(i)), [x, 2 * x]));
  const lr = s.ys('lr');
  xs.forEach((x, i) => assert.equal(lr[i], x < 150 ? 1 / (x + 2) : null));
  // A /metrics answer lands in the same columns, by the same field names.
  const h = new RunSeries('r2', 64);
  h.addHistory({ layers: [{ name: 'a.weight' }], step: [1, 2], loss: [0.5, 0.4], accuracy: [null, 1],
    global_grad_norm: [3, 4], lr: [0.1, 0.05], grad_norm: [[3], [4]], weight_norm: [[1], [1]],
    update_ratio: [[0.1], [0.2]] });
  assert.deepEqual(h.ys('lr'), [0.1, 0.05]);
  assert.deepEqual(h.ys('gnorm'), [3, 4]);
  assert.deepEqual(h.ys('accuracy'), [null, 1]);
  assert.deepEqual(Array.from(h.stats.update_ratio.row(1)), [Math.fround(0.2)]);
});

test('decimate: every column keeps its extremes and a gap, in step order, and no more', () => {
  const r = rng(7);
  for (let round = 0; round < 60; round++) {
    const n = 50 + Math.floor(r() * 3000);
    const cols = 5 + Math.floor(r() * 200);
    const x = [];
    let s = Math.floor(r() * 100);
    for (let i = 0; i < n; i++) { s += 1 + Math.floor(r() * 3); x.push(s); }
    const y = x.map(() => (r() < 0.03 ? null : r() < 0.01 ? 1e6 * r() : r()));
    // A zoomed view (part of the steps) in a third of the rounds.
    const [lo, hi] = round % 3 ? [x[0], x[n - 1]] : [x[Math.floor(n / 3)], x[Math.floor(n / 2)]];
    const keep = decimateIndices(x, y, lo, hi, cols);
    if (n <= 2 * cols) { assert.equal(keep, null); continue; }
    // The reference, column by column the plain way.
    const width = (hi - lo) / cols;
    const byCol = new Map();
    x.forEach((v, i) => {
      const c = Math.floor((v - lo) / width);
      if (!byCol.has(c)) byCol.set(c, []);
      byCol.get(c).push(i);
    });
    const kept = new Set(keep);
    assert.equal(kept.size, keep.length);
    keep.forEach((v, i) => i && assert.ok(v > keep[i - 1], 'in step order'));
    assert.ok(kept.has(0) && kept.has(n - 1));
    for (const idx of byCol.values()) {
      const finite = idx.filter(i => y[i] != null);
      if (finite.length) {
        const lowest = Math.min(...finite.map(i => y[i])), highest = Math.max(...finite.map(i => y[i]));
        assert.ok(idx.some(i => kept.has(i) && y[i] === lowest), 'the lowest value of a column');
        assert.ok(idx.some(i => kept.has(i) && y[i] === highest), 'the highest value of a column');
      }
      if (idx.some(i => y[i] == null)) assert.ok(idx.some(i => kept.has(i) && y[i] == null), 'a gap stays a gap');
      assert.ok(idx.filter(i => kept.has(i) && i !== 0 && i !== n - 1).length <= 3);
    }
    const d = decimate(x, y, lo, hi, cols);
    assert.deepEqual(d.x, keep.map(i => x[i]));
    assert.deepEqual(d.y, keep.map(i => y[i]));
  }
});
