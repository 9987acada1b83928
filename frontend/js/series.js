// Per-run columnar buffers: history from /metrics and live `metrics` events
// land in the same typed arrays, which the charts read. No DOM.
//
// api.js guarantees what arrives here is in seq order and never twice; this
// module only appends, and thins the arrays (every other point) when they grow
// past `cap`, so a 100k-step run does not make every redraw slower.
// Non-finite values arrive as null (JSON has no NaN) and are stored as NaN.

export const LAYER_STATS = ['grad_norm', 'weight_norm', 'update_ratio'];
const MAX_EVENTS = 200;  // the details panel's list of other events (alerts are all kept, apart)

// A growable Float64Array (or a rows x width Float32Array matrix when width > 1).
class Column {
  constructor(width = 1, Type = Float64Array) {
    this.width = width;
    this.Type = Type;
    this.buf = new Type(64 * width);
    this.length = 0;
  }

  grow() {
    const next = new this.Type(this.buf.length * 2);
    next.set(this.buf);
    this.buf = next;
  }

  push(v) {
    if ((this.length + 1) * this.width > this.buf.length) this.grow();
    this.buf[this.length++] = v ?? NaN;
  }

  pushRow(row) {
    if ((this.length + 1) * this.width > this.buf.length) this.grow();
    const at = this.length * this.width;
    for (let i = 0; i < this.width; i++) this.buf[at + i] = row?.[i] ?? NaN;
    this.length++;
  }

  get(i) { return this.buf[i]; }
  row(i) { return this.buf.subarray(i * this.width, (i + 1) * this.width); }
  values() { return this.buf.subarray(0, this.length * this.width); }

  // Keep the rows whose index passes `keep`, in place.
  filter(keep) {
    let out = 0;
    for (let i = 0; i < this.length; i++) {
      if (!keep(i)) continue;
      if (out !== i) this.buf.copyWithin(out * this.width, i * this.width, (i + 1) * this.width);
      out++;
    }
    this.length = out;
  }
}

// A value as Plotly wants it: NaN becomes null (a gap).
export const num = v => (Number.isFinite(v) ? v : null);

// Once a buffer is full, thin it to about half, evenly over the steps: a
// point is kept when it is at least (span / half the cap) steps after the last
// one kept. Live steps arrive densely after a sparse history; halving by index
// would thin the old part again each time, while this keeps it. The first and
// the latest step are always kept. Returns whether it thinned.
function thinColumns(step, columns, cap) {
  if (step.length <= cap) return false;
  const last = step.length - 1;
  const spacing = (step.get(last) - step.get(0)) / (cap / 2);
  const mask = new Uint8Array(step.length);
  let kept = -Infinity;
  for (let i = 0; i <= last; i++) {
    if (i !== last && step.get(i) - kept < spacing) continue;
    kept = step.get(i);
    mask[i] = 1;
  }
  for (const c of [step, ...columns]) c.filter(i => mask[i]);
  return true;
}

const finite = values => (values ?? []).filter(Number.isFinite);
const median = values => {
  const v = finite(values).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
};
const mean = values => {
  const v = finite(values);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
};

// [lo, hi]: the smallest positive and the largest finite value seen.
function widen(range, v) {
  if (v == null || !Number.isFinite(v)) return;
  if (v > 0 && v < range[0]) range[0] = v;
  if (v > range[1]) range[1] = v;
}

// What LineFigure reads of a series: its steps (a plain array, for Plotly) and
// one scalar column, from index `from` on.
class Steps {
  get length() { return this.step.length; }
  xs(from = 0) { return Array.from(this.step.buf.subarray(from, this.length)); }
  ys(key, from = 0) { return Array.from(this[key].buf.subarray(from, this.length), num); }
}

// The statistics the probe takes every `stats_every` steps, one scalar per
// step for the line charts: the median effective learning rate (lr/||w||^2)
// of the weights that feed a BatchNorm, and the mean fraction of dead ReLU
// units over the hidden layers. The same interface as RunSeries for LineFigure.
export class StatsSeries extends Steps {
  constructor(cap = 4000) {
    super();
    this.cap = cap;
    this.version = 0;
    this.step = new Column();
    this.effLr = new Column();
    this.dead = new Column();
    this.bnFeeds = [];   // the weights the effective lr is taken over
    this.actLayers = []; // the activations the dead fraction is taken over
  }

  // One step's `stats` record (a metrics event's, or a row of /metrics' columns).
  push(step, eff, dead) {
    this.step.push(step);
    this.effLr.push(median(eff));
    this.dead.push(mean(dead));
  }

  // Layer names: a change (the first stats to come) rebuilds the figures, whose
  // "nothing to show" note depends on them.
  setLayers(bnFeeds, actLayers) {
    if (bnFeeds && bnFeeds.join() !== this.bnFeeds.join()) { this.bnFeeds = bnFeeds; this.version++; }
    if (actLayers && actLayers.join() !== this.actLayers.join()) { this.actLayers = actLayers; this.version++; }
  }

  addEvent(step, stats) {
    this.setLayers(stats.bn_feeds, stats.act_layers);
    this.push(step, stats.eff_lr, stats.dead_frac);
    if (thinColumns(this.step, [this.effLr, this.dead], this.cap)) this.version++;
  }

  addHistory(cols) {
    if (!cols?.step?.length) return;
    this.setLayers(cols.bn_feeds, cols.act_layers);
    for (let i = 0; i < cols.step.length; i++) this.push(cols.step[i], cols.eff_lr?.[i], cols.dead_frac?.[i]);
    if (thinColumns(this.step, [this.effLr, this.dead], this.cap)) this.version++;
  }
}

export class RunSeries extends Steps {
  constructor(id, cap = 4000) {
    super();
    this.id = id;
    this.cap = cap;
    this.version = 0;   // bumped when arrays are rebuilt rather than appended to
    this.layers = [];   // [{name, module, shape}] in forward order
    this.step = new Column();
    this.loss = new Column();
    this.accuracy = new Column();
    this.gnorm = new Column(); // global gradient norm
    this.lr = new Column();    // the learning rate each step was taken with (NaN: not reported)
    this.layerStats = new StatsSeries(cap); // every stats_every steps
    this.stats = {};           // grad_norm / weight_norm / update_ratio: rows x layers
    this.resetLayers(0);
    this.valStep = [];     // evaluated steps, and their validation loss and accuracy (null: not reported)
    this.valLoss = [];
    this.valAccuracy = [];
    this.events = [];          // recent events other than metrics and alerts, for the details panel
    this.interventions = [];   // every intervention: markers on the charts
    this.alerts = [];          // every alert (one per episode): markers, and the panel's list
    this.alertEnds = [];       // every alert.end: the peak of an episode
    // Smallest positive and largest finite value of loss and global grad norm
    // ever stored: whether their axes go log by itself (diagnosis.js autoLog).
    this.range = { loss: [Infinity, -Infinity], gnorm: [Infinity, -Infinity] };
    this.finished = null;      // the run.finished event, once it came
    this.marksVersion = 0;     // bumped when an event that draws a marker arrives
    this.received = 0;         // live metrics events taken (the benchmark counts them)
  }

  resetLayers(width) {
    for (const k of LAYER_STATS) {
      const old = this.stats[k];
      this.stats[k] = new Column(width, Float32Array);
      // Steps stored before the layer list came (it comes first, normally) keep their place.
      for (let i = 0; i < (old?.length ?? 0); i++) this.stats[k].pushRow(null);
    }
  }

  // A /metrics answer. `since` is the seq it was asked from; events at or
  // below it were handed on before and are skipped.
  addHistory(cols, since = 0) {
    if (cols.layers?.length) this.setLayers(cols.layers);
    const n = cols.step?.length ?? 0;
    for (let i = 0; i < n; i++) this.push(cols, i);
    const val = cols.val ?? {};
    for (let i = 0; i < (val.step?.length ?? 0); i++) this.pushVal(val.step[i], val.loss?.[i], val.accuracy?.[i]);
    this.layerStats.addHistory(cols.stats);
    for (const e of cols.events ?? []) if (!(e.seq <= since)) this.addEvent(e);
    this.thin();
  }

  // One live event (or a non-metrics event from history).
  addEvent(msg) {
    switch (msg.type) {
      case 'run.started':
        if (msg.layers?.length) this.setLayers(msg.layers);
        return;
      case 'metrics':
        this.received++;
        this.push(msg);
        if (msg.val_accuracy !== undefined || msg.val_loss !== undefined) {
          this.pushVal(msg.step, msg.val_loss, msg.val_accuracy);
        }
        if (msg.stats) this.layerStats.addEvent(msg.step, msg.stats);
        this.thin();
        return;
      case 'intervention':
        this.interventions.push(msg);
        break;
      case 'alert':
        this.alerts.push(msg);
        this.marksVersion++;
        return;
      case 'alert.end':
        this.alertEnds.push(msg);
        this.marksVersion++;
        return;
      case 'run.finished':
        this.finished = msg;
        break;
    }
    this.events.push(msg);
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
    this.marksVersion++;
  }

  setLayers(layers) {
    const same = layers.length === this.layers.length && layers.every((l, i) => l.name === this.layers[i].name);
    if (same) return;
    this.layers = layers;
    this.resetLayers(layers.length);
    this.version++;
  }

  // One step: a metrics event (`i` undefined), or row `i` of a /metrics answer's columns.
  // Both name their fields alike; a field a run does not report is NaN.
  push(src, i) {
    const at = key => (i === undefined ? src[key] : src[key]?.[i]);
    widen(this.range.loss, at('loss'));
    widen(this.range.gnorm, at('global_grad_norm'));
    this.step.push(at('step'));
    this.loss.push(at('loss'));
    this.accuracy.push(at('accuracy'));
    this.gnorm.push(at('global_grad_norm'));
    this.lr.push(at('lr'));
    for (const k of LAYER_STATS) this.stats[k].pushRow(at(k));
  }

  pushVal(step, loss, accuracy) {
    if (loss == null && accuracy == null) return;
    this.valStep.push(step);
    this.valLoss.push(loss ?? null);
    this.valAccuracy.push(accuracy ?? null);
  }

  thin() {
    const columns = [this.loss, this.accuracy, this.gnorm, this.lr, ...Object.values(this.stats)];
    if (thinColumns(this.step, columns, this.cap)) this.version++;
  }

  lastStep() {
    return this.length ? this.step.get(this.length - 1) : null;
  }

  firstStep() {
    return this.length ? this.step.get(0) : null;
  }

  // Index of the last stored step at or before `step` (the latest when step
  // is null), or -1 when there is none.
  indexAt(step) {
    const n = this.length;
    if (!n) return -1;
    if (step == null) return n - 1;
    let lo = 0, hi = n - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.step.get(mid) <= step) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }
}
