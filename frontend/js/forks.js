// Forks (docs/api.md, "Forks"): a run started again from a checkpoint of another
// at some step, with other settings. This module: the runs table's tree order,
// the parent's history before the fork step (drawn faintly beneath the fork),
// the retry suggestion for a diverged run, and the "fork from step S" panel.

// The fields the panel offers: those a fork may change that change training
// (trainer/checkpoint.py's TRAINING_FIELDS); the server checks every value.
export const FORK_FIELDS = [
  { key: 'lr', label: 'learning rate', min: 1e-8 },
  { key: 'l2', label: 'L2 (weight decay)', min: 0 },
  { key: 'grad_clip', label: 'clip grad norm at (0 = off)', min: 0 },
  { key: 'momentum', label: 'momentum (SGD)', min: 0, max: 0.999 },
  { key: 'dropout', label: 'dropout', min: 0, max: 0.9 },
];

// Runs newest first, with every fork right under its parent (its own forks
// under it in turn), oldest fork first; a fork whose parent is gone is a root.
// Returns {order: [run], depth: Map(id -> 0, 1, ...)}.
export function treeOrder(runs) {
  const ids = new Set(runs.map(r => r.id));
  const children = new Map();
  const roots = [];
  for (const run of runs) {
    const parent = run.fork?.parent;
    if (parent && ids.has(parent) && parent !== run.id) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(run);
    } else {
      roots.push(run);
    }
  }
  const order = [];
  const depth = new Map();
  const visit = (run, d) => {
    if (depth.has(run.id)) return; // a cycle cannot happen; never loop if it did
    depth.set(run.id, d);
    order.push(run);
    const kids = (children.get(run.id) ?? []).slice().sort((a, b) => (a.created ?? 0) - (b.created ?? 0));
    for (const kid of kids) visit(kid, d + 1);
  };
  for (const run of roots) visit(run, 0);
  for (const run of runs) if (!depth.has(run.id)) visit(run, 0);
  return { order, depth };
}

// "↳ from <parent> at step 20 · l2 0.01": what a fork's row says under its name.
export function forkNote(run, runs) {
  const f = run.fork;
  if (!f) return '';
  const parent = runs.get(f.parent);
  const changes = Object.entries(f.changes ?? {}).map(([k, v]) => `${k} ${v}`).join(', ');
  return `↳ from ${parent?.name ?? f.parent} at step ${f.step}` + (changes ? ` · ${changes}` : ' · no changes');
}

// What to try from the last checkpoint before a divergence: clip the gradient
// norm, a third of the learning rate, a little L2 (those the run has not
// already got). null when the run did not diverge or kept no checkpoint.
export function retrySuggestion(run) {
  const step = run?.summary?.checkpoint_before_divergence;
  if (run?.status !== 'diverged' || step == null) return null;
  const c = run.config ?? {};
  const changes = { lr: +((c.lr ?? 0.05) / 3).toPrecision(3) };
  if (!(c.grad_clip > 0)) changes.grad_clip = 1;
  if (!(c.l2 > 0)) changes.l2 = 1e-4;
  const why = Object.entries(changes).map(([k, v]) => `${k} ${v}`).join(', ') + ' (edit or clear any of them)';
  return { step, changes, why };
}

// A fork's parent history before the fork step, for the line charts:
// {step, loss, accuracy, gnorm} arrays, fetched once per fork.
export class Prefixes {
  constructor(api, onLoad) {
    this.api = api;
    this.onLoad = onLoad;
    this.cache = new Map(); // fork id -> prefix | 'loading' | null (none to draw)
  }

  get(run) {
    if (!run?.fork) return null;
    const have = this.cache.get(run.id);
    if (have !== undefined) return have === 'loading' ? null : have;
    this.cache.set(run.id, 'loading');
    const { parent, step } = run.fork;
    this.api.metrics(parent, 0, 1500).then(cols => {
      const n = cols.step.findIndex(s => s >= step);
      const end = n < 0 ? cols.step.length : n + 1; // up to the fork step itself: the lines join
      const cut = a => (a ?? []).slice(0, end);
      this.cache.set(run.id, { step: cut(cols.step), loss: cut(cols.loss), accuracy: cut(cols.accuracy),
        gnorm: cut(cols.global_grad_norm), parent });
      this.onLoad();
    }).catch(() => this.cache.set(run.id, null)); // the parent deleted: nothing beneath
    return null;
  }

  forget(id) { this.cache.delete(id); }
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  Object.assign(node, attrs);
  if (text !== undefined) node.textContent = text;
  return node;
}

// The "fork from step S" panel: a small floating card with the live-change
// fields, filled with the run's settings (or a retry's suggestions).
export class ForkPanel {
  constructor(api, { onForked, onError }) {
    this.api = api;
    this.onForked = onForked;
    this.onError = onError;
    this.card = el('div', { id: 'fork-panel', className: 'card fork-panel', hidden: true });
    this.card.setAttribute('role', 'dialog');
    this.title = el('h3');
    this.note = el('p', { className: 'fork-note' });
    this.fields = new Map();
    const grid = el('div', { className: 'fork-fields' });
    for (const f of FORK_FIELDS) {
      const input = el('input', { type: 'number', name: f.key, step: 'any', min: String(f.min) });
      if (f.max != null) input.max = String(f.max);
      const label = el('label', { className: 'field' });
      label.append(el('span', {}, f.label), input);
      grid.append(label);
      this.fields.set(f.key, input);
    }
    this.error = el('p', { className: 'field-error fork-error' });
    this.go = el('button', { type: 'button', className: 'fork-go' }, 'Fork');
    const cancel = el('button', { type: 'button', className: 'fork-cancel' }, 'Cancel');
    const row = el('div', { className: 'fork-actions' });
    row.append(this.go, cancel);
    this.card.append(this.title, this.note, grid, this.error, row);
    document.body.append(this.card);
    cancel.addEventListener('click', () => this.close());
    this.go.addEventListener('click', () => this.submit());
    document.addEventListener('keydown', ev => { if (ev.key === 'Escape') this.close(); });
  }

  // run: the record; step: asked for; suggest: {changes, why} of a retry, or null.
  async open(run, step, suggest = null) {
    this.run = run;
    this.step = Math.max(1, Math.round(step));
    this.error.textContent = '';
    const c = run.config ?? {};
    for (const [key, input] of this.fields) input.value = String(suggest?.changes?.[key] ?? c[key] ?? '');
    this.title.textContent = suggest ? `Retry ${run.name} from step ${this.step}` : `Fork ${run.name} from step ${this.step}`;
    this.note.textContent = suggest ? 'the last checkpoint before it diverged; suggested: ' + suggest.why : '';
    this.card.hidden = false;
    this.fields.get(suggest ? Object.keys(suggest.changes)[0] : 'l2')?.focus();
    try {
      const { steps } = await this.api.checkpoints(run.id);
      const at = steps.filter(s => s <= this.step).pop();
      const where = at == null ? `no checkpoint at or before step ${this.step}` + (steps.length ? ` (the first is at step ${steps[0]})` : '')
        : at === this.step ? `starts from the checkpoint at step ${at}` : `starts from the newest checkpoint at or before it: step ${at}`;
      if (this.run === run) this.note.textContent = [where, this.note.textContent].filter(Boolean).join('; ');
    } catch { /* the fork request says what is wrong */ }
  }

  close() { this.card.hidden = true; this.run = null; }

  // Only what differs from the parent's settings is a change.
  changes() {
    const c = this.run.config ?? {};
    const out = {};
    for (const [key, input] of this.fields) {
      if (input.value === '') continue;
      const v = Number(input.value);
      if (v !== c[key]) out[key] = v;
    }
    return out;
  }

  async submit() {
    if (!this.run) return;
    this.go.disabled = true;
    this.error.textContent = '';
    try {
      const fork = await this.api.forkRun(this.run.id, this.step, this.changes());
      const parent = this.run;
      this.close();
      this.onForked(fork, parent);
    } catch (err) {
      const d = err.detail;
      this.error.textContent = Array.isArray(d) ? d.map(x => `${x.loc?.at(-1)}: ${x.msg}`).join('; ')
        : `${err.status ?? ''} ${err.message ?? err}`.trim();
      this.onError?.(err);
    } finally {
      this.go.disabled = false;
    }
  }
}
