// frontend/js/layers.js under `node --test`: grouping by module path, the filter's globs,
// block aggregates and the rows a per-layer view draws, each against a reference computed
// here the plain way (issue 18).
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_BLOCKS, aggregate, blockOf, blocksOf, blockTicks, globSource, layerMatcher, layerRows, pathOf, rowValue, toggleOpen,
} from '../../frontend/js/layers.js';
import { formatState, parseState } from '../../frontend/js/state.js';

// torchvision's ResNet-34 with BatchNorm: 110 tensors, the names named_parameters() gives.
function resnet34() {
  const bn = p => [`${p}.weight`, `${p}.bias`];
  const names = ['conv1.weight', ...bn('bn1')];
  [3, 4, 6, 3].forEach((n, s) => {
    for (let b = 0; b < n; b++) {
      const p = `layer${s + 1}.${b}`;
      names.push(`${p}.conv1.weight`, ...bn(`${p}.bn1`), `${p}.conv2.weight`, ...bn(`${p}.bn2`));
      if (s > 0 && b === 0) names.push(`${p}.downsample.0.weight`, ...bn(`${p}.downsample.1`));
    }
  });
  return [...names, 'fc.weight', 'fc.bias'];
}

// A GPT-2-like model of 24 blocks x 12 tensors + 5: 293 tensors.
function gpt(blocks = 24) {
  const names = ['transformer.wte.weight', 'transformer.wpe.weight'];
  for (let i = 0; i < blocks; i++) {
    for (const m of ['ln_1', 'attn.c_attn', 'attn.c_proj', 'ln_2', 'mlp.c_fc', 'mlp.c_proj']) {
      names.push(`transformer.h.${i}.${m}.weight`, `transformer.h.${i}.${m}.bias`);
    }
  }
  return [...names, 'transformer.ln_f.weight', 'transformer.ln_f.bias', 'lm_head.weight'];
}

test('blockOf: the module path up to the first numbered module, else the whole module path', () => {
  assert.deepEqual(blockOf('layer3.4.conv2.weight'), { block: 'layer3.4', group: 'layer3' });
  assert.deepEqual(blockOf('layer2.0.downsample.0.weight'), { block: 'layer2.0', group: 'layer2' });
  assert.deepEqual(blockOf('transformer.h.17.attn.c_attn.bias'), { block: 'transformer.h.17', group: 'transformer.h' });
  assert.deepEqual(blockOf('fc.weight'), { block: 'fc', group: 'fc' });
  assert.deepEqual(blockOf('blocks.0.attn.q.weight'), { block: 'blocks.0', group: 'blocks' });
  assert.deepEqual(blockOf('0.weight'), { block: '0', group: '' });
  assert.deepEqual(blockOf('scale'), { block: 'scale', group: 'scale' });
  assert.equal(pathOf('layer3.4.conv2.weight'), 'layer3 › layer3.4 › layer3.4.conv2.weight');
  assert.equal(pathOf('fc.bias'), 'fc › fc.bias');
});

test('blocksOf: every tensor in exactly one block, in forward order; ResNet-34 reads as 19 blocks', () => {
  for (const names of [resnet34(), gpt(), gpt(3)]) {
    const blocks = blocksOf(names);
    const flat = blocks.flatMap(b => b.members);
    assert.deepEqual(flat, names.map((_, i) => i), 'each tensor once, in order');
    assert.ok(blocks.length <= MAX_BLOCKS, `${blocks.length} blocks`);
    for (const b of blocks) assert.ok(b.members.every(i => names[i].startsWith(b.key.split('–')[0].split('.').slice(0, -1).join('.'))));
  }
  const r = blocksOf(resnet34());
  // conv1, bn1, 3 + 4 + 6 + 3 residual blocks, fc: the reference by hand.
  assert.deepEqual(r.map(b => b.key), ['conv1', 'bn1', ...[3, 4, 6, 3].flatMap((n, s) => Array.from({ length: n }, (_, b) => `layer${s + 1}.${b}`)), 'fc']);
  assert.equal(r.find(b => b.key === 'layer3.4').members.length, 6);
  assert.equal(r.find(b => b.key === 'layer2.0').members.length, 9); // with its downsample
});

test('blocksOf: past MAX_BLOCKS, numbered siblings merge into ranges, as few per range as fit', () => {
  const names = gpt(); // 24 numbered blocks + wte, wpe, ln_f, lm_head = 28 > 24
  const blocks = blocksOf(names);
  assert.equal(blocks[0].key, 'transformer.wte');
  assert.equal(blocks[2].key, 'transformer.h.0–1');
  assert.equal(blocks.filter(b => b.key.startsWith('transformer.h.')).length, 12);
  assert.equal(blocks.length, 16);
  // The reference: ceil(n / per) ranges for the smallest per that fits.
  for (const n of [30, 64, 100, 300]) {
    const mlp = Array.from({ length: n }, (_, i) => `net.${i}.weight`);
    const got = blocksOf(mlp);
    const per = Array.from({ length: n }, (_, k) => k + 1).find(p => Math.ceil(n / p) <= MAX_BLOCKS);
    assert.equal(got.length, Math.ceil(n / per), `${n} layers`);
    assert.deepEqual(got.flatMap(b => b.members), mlp.map((_, i) => i));
  }
});

test('layerMatcher: substrings, globs over the whole name, several terms, ! hides; case ignored', () => {
  const names = resnet34();
  const pick = f => names.filter(layerMatcher(f));
  assert.equal(layerMatcher(''), null);
  assert.equal(layerMatcher('  , '), null);
  assert.deepEqual(pick('layer3.4.'), names.filter(n => n.includes('layer3.4.')));
  assert.deepEqual(pick('LAYER3.4.'), pick('layer3.4.'));
  // A glob is anchored: *.conv?.weight is every conv weight of a residual block, not the stem's.
  assert.deepEqual(pick('*.conv?.weight'), names.filter(n => /^.+\.conv\d\.weight$/.test(n)));
  assert.ok(!pick('*.conv?.weight').includes('conv1.weight'));
  assert.deepEqual(pick('conv?.weight'), ['conv1.weight']);
  assert.deepEqual(pick('layer[12].0.*'), names.filter(n => /^layer[12]\.0\./.test(n)));
  assert.deepEqual(pick('layer[!12].0.conv1.*'), ['layer3.0.conv1.weight', 'layer4.0.conv1.weight']);
  assert.deepEqual(pick('fc, bn1.bias'), names.filter(n => n.includes('fc') || n.includes('bn1.bias')));
  assert.deepEqual(pick('layer4 !bn'), names.filter(n => n.includes('layer4') && !n.includes('bn')));
  assert.deepEqual(pick('!bias'), names.filter(n => !n.includes('bias')));
  // Regular-expression characters are literal; an unclosed [ too.
  assert.deepEqual(['a.b', 'axb', 'a[b'].filter(layerMatcher('a.b*')), ['a.b']);
  assert.deepEqual(['a[b.weight', 'ab.weight'].filter(layerMatcher('a[b*')), ['a[b.weight']);
  assert.equal(new RegExp(`^${globSource('x(1)+$*')}$`).test('x(1)+$yz'), true);
});

test('aggregate: max and median of the finite members, NaN and gaps left out, Infinity kept', () => {
  const r = (() => { let s = 9; return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31); })();
  for (let t = 0; t < 200; t++) {
    const values = Array.from({ length: 20 }, () => (r() < 0.1 ? NaN : r() < 0.05 ? null : 10 ** (4 * r() - 2)));
    const members = Array.from({ length: 1 + Math.floor(r() * 19) }, () => Math.floor(r() * 20));
    const vals = members.map(i => values[i]).filter(v => typeof v === 'number' && !Number.isNaN(v)).sort((a, b) => a - b);
    if (!vals.length) { assert.equal(aggregate(values, members, 'max'), null); continue; }
    assert.equal(aggregate(values, members, 'max'), Math.max(...vals));
    const n = vals.length;
    assert.equal(aggregate(values, members, 'median'), n % 2 ? vals[(n - 1) / 2] : (vals[n / 2 - 1] + vals[n / 2]) / 2);
  }
  assert.equal(aggregate([1, Infinity, 3], [0, 1, 2], 'max'), Infinity);
  assert.equal(aggregate([1, 2, 3, 100], [0, 1, 2, 3], 'median'), 2.5);
});

test('layerRows: keep, filter, blocks with their aggregate, opened blocks followed by their tensors', () => {
  const names = resnet34();
  const weights = i => names[i].endsWith('.weight') && !/bn|downsample\.1/.test(names[i]);
  // Every tensor: one row each, `starts` at each block's first tensor.
  const all = layerRows(names);
  assert.deepEqual(all.rows.map(r => r.label), names);
  assert.deepEqual(all.starts.map(s => s.label), blocksOf(names).map(b => b.key));
  assert.ok(all.starts.every(s => blockOf(names[all.rows[s.row].members[0]]).block === s.label));
  // Max per block over the weights: 19 rows (conv1 and fc one tensor each: shown as themselves).
  const agg = layerRows(names, { keep: weights, agg: 'max' });
  assert.equal(agg.rows.length, 18); // bn1 has no weight matrix
  assert.equal(agg.rows[0].label, 'conv1.weight');
  assert.equal(agg.rows[0].kind, 'tensor');
  const l34 = agg.rows.find(r => r.block === 'layer3.4');
  assert.equal(l34.label, '▸ layer3.4 (max of 2)');
  assert.deepEqual(l34.members, [names.indexOf('layer3.4.conv1.weight'), names.indexOf('layer3.4.conv2.weight')]);
  // Opened: the block's row, then its tensors.
  const opened = layerRows(names, { keep: weights, agg: 'max', open: ['layer3.4'] });
  const at = opened.rows.findIndex(r => r.block === 'layer3.4');
  assert.deepEqual(opened.rows.slice(at, at + 3).map(r => r.label),
    ['▾ layer3.4 (max of 2)', 'layer3.4.conv1.weight', 'layer3.4.conv2.weight']);
  assert.equal(new Set(opened.rows.map(r => r.label)).size, opened.rows.length, 'labels are unique');
  // The filter first, then the blocks.
  const f = layerRows(names, { filter: 'layer3.*', agg: 'median' });
  assert.deepEqual(f.rows.map(r => r.block), ['layer3.0', 'layer3.1', 'layer3.2', 'layer3.3', 'layer3.4', 'layer3.5']);
  assert.equal(f.rows[0].members.length, 9);
  // Row values: a tensor's own, a block's aggregate of its members.
  const values = names.map((_, i) => i + 0.5);
  assert.equal(rowValue(l34, values, 'max'), Math.max(...l34.members.map(i => values[i])));
  assert.equal(rowValue(agg.rows[0], values, 'max'), values[0]);
  assert.equal(rowValue({ kind: 'tensor', members: [0] }, [NaN], 'max'), NaN);
  assert.deepEqual(layerRows(names, { filter: 'nothing-like-this' }).rows, []);
});

test('blockTicks: past LABEL_ROWS rows, the axis names each block once; toggleOpen', () => {
  const names = gpt();
  const many = layerRows(names);
  const axis = {};
  blockTicks(axis, many.rows, many.starts);
  assert.deepEqual(axis.ticktext, blocksOf(names).map(b => b.key));
  assert.deepEqual(axis.tickvals, blocksOf(names).map(b => names[b.members[0]]));
  const few = layerRows(names, { agg: 'max' });
  const untouched = {};
  blockTicks(untouched, few.rows, few.starts);
  assert.deepEqual(untouched, {});
  assert.deepEqual(toggleOpen(['a', 'b'], 'a'), ['b']);
  assert.deepEqual(toggleOpen(['b'], 'a'), ['b', 'a']);
});

test('URL state: the filter, the aggregate and the opened blocks round-trip, defaults stay out', () => {
  const s = parseState('?filter=layer3*+!bias&agg=median&open=layer3.4,blocks.0–3').state;
  assert.equal(s.filter, 'layer3* !bias');
  assert.equal(s.agg, 'median');
  assert.deepEqual(s.open, ['layer3.4', 'blocks.0–3']);
  assert.deepEqual(parseState(formatState(s, '')).state, s);
  assert.equal(parseState('?agg=mean').state.agg, 'none');
  const plain = formatState(parseState('').state, '?token=x');
  assert.ok(!/filter|agg|open/.test(plain), plain);
});
