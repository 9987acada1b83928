// forks.js's pure parts under `node --test` (tests/test_js_units.py runs every tests/js/*.test.mjs).
import test from 'node:test';
import assert from 'node:assert/strict';
import { forkNote, retrySuggestion, treeOrder } from '../../frontend/js/forks.js';

const run = (id, created, parent = null, step = 10) => ({ id, name: `run ${id}`, created,
  fork: parent ? { parent, step, asked: step, changes: {} } : null });

test('treeOrder: forks right under their parent, oldest fork first, nested; orphans are roots', () => {
  // newest first, as the page lists them
  const runs = [run('e', 5, 'a'), run('d', 4), run('c', 3, 'b'), run('b', 2, 'a'), run('a', 1), run('x', 0, 'gone')];
  const { order, depth } = treeOrder(runs);
  assert.deepEqual(order.map(r => r.id), ['d', 'a', 'b', 'c', 'e', 'x']);
  assert.deepEqual(order.map(r => depth.get(r.id)), [0, 0, 1, 2, 1, 0]);
});

test('retrySuggestion: only for a diverged run with a checkpoint; adds what the run lacks', () => {
  const diverged = { status: 'diverged', config: { lr: 0.3, grad_clip: 0, l2: 0 },
    summary: { checkpoint_before_divergence: 10 } };
  const s = retrySuggestion(diverged);
  assert.equal(s.step, 10);
  assert.deepEqual(s.changes, { lr: 0.1, grad_clip: 1, l2: 1e-4 });
  const clipped = retrySuggestion({ ...diverged, config: { lr: 0.3, grad_clip: 5, l2: 0.01 } });
  assert.deepEqual(clipped.changes, { lr: 0.1 });
  assert.equal(retrySuggestion({ ...diverged, summary: {} }), null);
  assert.equal(retrySuggestion({ ...diverged, status: 'completed' }), null);
});

test('forkNote names the parent, the step and the changes', () => {
  const runs = new Map([['a', run('a', 1)]]);
  const fork = { ...run('b', 2, 'a', 20), fork: { parent: 'a', step: 20, asked: 25, changes: { l2: 0.01 } } };
  assert.equal(forkNote(fork, runs), '↳ from run a at step 20 · l2 0.01');
  assert.equal(forkNote(run('a', 1), runs), '');
});
