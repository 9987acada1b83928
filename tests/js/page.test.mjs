// The page's comparison helpers (issue 17) under `node --test`: which config fields a
// comparison may name, and run colors that stay with their run across selections.
import test from 'node:test';
import assert from 'node:assert/strict';
import { chipsNote, differingFields, showValue, unsharedFields } from '../../frontend/js/chips.js';
import { ColorBook, PALETTE, distance, hashColor } from '../../frontend/js/colors.js';

const BUILT_IN = { dataset: 'synthetic', depth: 2, batchnorm: false, lr: 0.05, l2: 0 };
const OWN_LOOP = { lr: 0.1 }; // connect(config={"lr": 0.1})

test('chips: only fields every run has are compared; the rest are counted, never shown as undefined', () => {
  assert.deepEqual(differingFields([BUILT_IN, OWN_LOOP]), ['lr']);
  assert.deepEqual(differingFields([OWN_LOOP, BUILT_IN]), ['lr']);
  assert.deepEqual(unsharedFields([BUILT_IN, OWN_LOOP]), ['dataset', 'depth', 'batchnorm', 'l2']);
  assert.equal(chipsNote([BUILT_IN, OWN_LOOP]), 'differ in: lr (4 fields not in every run)');
  // Same lr: nothing shared differs, and the note does not claim "same settings".
  assert.equal(chipsNote([{ ...BUILT_IN, lr: 0.1 }, OWN_LOOP]), 'no shared setting differs (4 fields not in every run)');
  assert.equal(chipsNote([BUILT_IN, { ...BUILT_IN }]), 'same settings');
  assert.equal(chipsNote([BUILT_IN]), '');
  // A null is "not said", like a missing field.
  assert.deepEqual(differingFields([{ a: 1, b: null }, { a: 2, b: 3 }]), ['a']);
  assert.deepEqual(differingFields([{ a: [1, 2] }, { a: [1, 3] }, { a: [1, 2] }]), ['a']);
  assert.equal(showValue({ k: 1 }), '{"k":1}');
  assert.equal(showValue(true), 'on');
  assert.equal(showValue(0.01), '0.01');
});

// Ids whose hash colors are equal: a clash the book must resolve.
function clashing(n) {
  const byColor = new Map();
  for (let i = 0; ; i++) {
    const id = `run${i}`;
    const same = byColor.get(hashColor(id)) ?? [];
    same.push(id);
    byColor.set(hashColor(id), same);
    if (same.length === n) return same;
  }
}

test('colors: a shown run is never recolored by a run joining it, and keeps its color in other selections', () => {
  const [a, b] = clashing(2);
  const c = 'other';
  const runs = [{ id: b, created: 1 }, { id: a, created: 2 }, { id: c, created: 3 }];
  const book = new ColorBook();
  const first = book.assign(runs, [a]).get(a);
  assert.equal(first, hashColor(a));
  // b is older and has the same hash color: without the book a would be recolored here.
  const both = book.assign(runs, [a, b]);
  assert.equal(both.get(a), first);
  assert.notEqual(both.get(b), first);
  assert.ok(distance(both.get(b), first) > 0);
  const bColor = both.get(b);
  // Other selections with the same runs: the same colors.
  assert.equal(book.assign(runs, [b, c]).get(b), bColor);
  assert.equal(book.assign(runs, [c, a]).get(a), first);
  assert.equal(book.assign(runs, [a, b]).get(b), bColor);
  // Unselected, a run shows the color it was shown in; a saved book carries it to a reload.
  assert.equal(book.assign(runs, []).get(b), bColor);
  const reloaded = new ColorBook(JSON.parse(JSON.stringify(book.saved())));
  assert.equal(reloaded.assign(runs, [b]).get(b), bColor);
  reloaded.forget(b);
  assert.equal(reloaded.assign(runs, []).get(b), hashColor(b));
});

test('colors: shown runs stay apart, up to the palette, whatever order they join in', () => {
  const ids = clashing(4).concat(Array.from({ length: 8 }, (_, i) => `x${i}`));
  const runs = ids.map((id, i) => ({ id, created: i }));
  const book = new ColorBook();
  const shown = [];
  const seen = new Map();
  for (const id of ids.slice(0, PALETTE.length)) {
    shown.push(id);
    const colors = book.assign(runs, shown);
    const chosen = shown.map(s => colors.get(s));
    assert.equal(new Set(chosen).size, chosen.length, `duplicates among ${chosen}`);
    for (const s of shown) {
      if (seen.has(s)) assert.equal(colors.get(s), seen.get(s), `${s} was recolored`);
      seen.set(s, colors.get(s));
    }
  }
  // A bounded memory: the oldest ids go first.
  const small = new ColorBook([], 2);
  small.assign(runs, ids.slice(0, 3));
  assert.equal(small.saved().length, 2);
  // A bad saved entry (not a palette color) is dropped, not shown.
  assert.equal(new ColorBook([['r', 'red'], [3, PALETTE[0]]]).saved().length, 0);
});
