// Exponential moving average, as TensorBoard's smoothing slider computes it:
// debiased (the first points are not pulled towards 0), and a gap (null/NaN)
// stays a gap without resetting the average. Pure math, no DOM.
//
// Incremental: `ema(values, weight, state)` continues from `state` (returned
// by the previous call) so appending points costs only the new ones.

export function ema(values, weight, state = { last: 0, n: 0 }) {
  const out = new Array(values.length);
  let { last, n } = state;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * v;
    n++;
    const debias = weight === 1 ? 1 : 1 - weight ** n;
    out[i] = last / debias;
  }
  return { values: out, state: { last, n } };
}
