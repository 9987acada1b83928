// Per-run columnar buffers: history from /metrics and live `metrics` events
// land in the same arrays, which the charts hand to Plotly. No DOM.
//
// api.js guarantees what arrives here is in seq order and never twice; this
// module only appends, and thins the arrays when they grow past MAX_POINTS so
// a 100k-step run does not make every redraw slower.

const MAX_POINTS = 4000;

export class RunSeries {
  constructor(id) {
    this.id = id;
    this.version = 0; // bumped when arrays are rebuilt rather than appended to
    this.layers = []; // [{name, module, shape}] in forward order
    this.step = [];
    this.loss = [];
    this.accuracy = [];
    this.gnorm = [];  // global gradient norm
    this.grad = [];   // one row per step: per-layer gradient norms, aligned with layers
    this.valStep = [];
    this.valAccuracy = [];
    this.events = []; // alert / intervention / run.finished / status, for the details panel
  }

  get length() { return this.step.length; }

  // A /metrics answer. `since` is the seq it was asked from; events at or
  // below it were handed on before and are skipped.
  addHistory(cols, since = 0) {
    if (cols.layers?.length) this.setLayers(cols.layers);
    const n = cols.step?.length ?? 0;
    for (let i = 0; i < n; i++) {
      this.push(cols.step[i], cols.loss?.[i], cols.accuracy?.[i], cols.global_grad_norm?.[i], cols.grad_norm?.[i]);
    }
    const val = cols.val ?? {};
    for (let i = 0; i < (val.step?.length ?? 0); i++) this.pushVal(val.step[i], val.accuracy?.[i]);
    for (const e of cols.events ?? []) if (!(e.seq <= since)) this.addEvent(e);
    this.thin();
  }

  // One live event (or a non-metrics event from history).
  addEvent(msg) {
    switch (msg.type) {
      case 'run.started':
        if (msg.layers?.length) this.setLayers(msg.layers);
        break;
      case 'metrics':
        this.push(msg.step, msg.loss, msg.accuracy, msg.global_grad_norm, msg.grad_norm);
        if (msg.val_accuracy !== undefined) this.pushVal(msg.step, msg.val_accuracy);
        this.thin();
        break;
      default:
        this.events.push(msg);
        if (this.events.length > 200) this.events.splice(0, this.events.length - 200);
    }
  }

  setLayers(layers) {
    const same = layers.length === this.layers.length && layers.every((l, i) => l.name === this.layers[i].name);
    if (!same) { this.layers = layers; this.version++; }
  }

  // Non-finite values arrive as null (JSON has no NaN); they stay null, which
  // Plotly draws as a gap.
  push(step, loss, accuracy, gnorm, grad) {
    this.step.push(step);
    this.loss.push(loss ?? null);
    this.accuracy.push(accuracy ?? null);
    this.gnorm.push(gnorm ?? null);
    this.grad.push(grad ?? []);
  }

  pushVal(step, accuracy) {
    if (accuracy === undefined) return;
    this.valStep.push(step);
    this.valAccuracy.push(accuracy ?? null);
  }

  // Keep every other point once the buffer is full: coarser history, same
  // shape, and the latest step always kept.
  thin() {
    if (this.step.length <= MAX_POINTS) return;
    const keep = (_, i, a) => i % 2 === 0 || i === a.length - 1;
    for (const k of ['step', 'loss', 'accuracy', 'gnorm', 'grad']) this[k] = this[k].filter(keep);
    this.version++;
  }

  // Latest per-layer gradient norms (the layer-profile chart).
  lastGrad() {
    return this.grad.length ? this.grad[this.grad.length - 1] : [];
  }

  lastStep() {
    return this.step.length ? this.step[this.step.length - 1] : null;
  }
}
