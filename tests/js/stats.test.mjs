// frontend/js/stats.js: the page's copy of the statistics registry (GET /api/stats), and the URL
// state's heatmap statistic checked against it once it came.
import test from 'node:test';
import assert from 'node:assert/strict';

import * as stats from '../../frontend/js/stats.js';
import { parseState } from '../../frontend/js/state.js';

const SERVED = [
  { name: 'grad_norm', cadence: 'step', per: 'parameter', title: 'grad norm', label: 'gradient norm', scale: 'log', heatmap: true, line: null, axis: '' },
  { name: 'ratio', cadence: 'step', per: 'parameter', title: 'r', label: 'a ratio', scale: 'log', heatmap: true, line: null, axis: '‖a‖ / ‖b‖' },
  { name: 'dead_frac', cadence: 'stats', per: 'activation', title: 'dead units', label: 'dead', scale: 'linear', heatmap: true, line: 'mean', axis: '' },
  { name: 'eff_lr', cadence: 'stats', per: 'bn', title: 'effective lr', label: 'eff', scale: 'log', heatmap: false, line: 'median', axis: '' },
  { name: 'act_mean', cadence: 'stats', per: 'activation', title: 'mean', label: 'mean', scale: 'log', heatmap: false, line: null, axis: '' },
];

test('before the list came: ask /metrics for every statistic, take any name from a link; after: the served list decides', async () => {
  assert.equal(stats.lineStats(), null);
  assert.equal(parseState('?stat=ratio').state.stat, 'ratio');
  let settled = false;
  stats.statsReady.then(() => { settled = true; });
  await stats.loadStats({ stats: async () => SERVED });
  await stats.statsReady;
  assert.ok(settled);
  assert.deepEqual(stats.heatmapStats().map(s => s.name), ['grad_norm', 'ratio', 'dead_frac']);
  assert.deepEqual(stats.lineStats(), ['dead_frac', 'eff_lr']);
  assert.equal(stats.titleOf('ratio'), 'r');
  assert.equal(stats.axisOf('ratio'), '‖a‖ / ‖b‖');
  assert.equal(stats.axisOf('grad_norm'), 'grad norm');
  assert.equal(stats.isLinear('dead_frac'), true);
  assert.equal(stats.isLinear('grad_norm'), false);
  assert.equal(parseState('?stat=ratio').state.stat, 'ratio');
  assert.equal(parseState('?stat=eff_lr').state.stat, 'grad_norm'); // not on the heatmap
  assert.equal(parseState('?stat=nope').state.stat, 'grad_norm');
});
