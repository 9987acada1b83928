// The runs table: one row per run, keyed by run id, updated in place so a
// live update does not steal a click or reset a checkbox mid-interaction.
// Actions are reported through `handlers` (select, focus, stop, remove, retry).

import { notLearning } from './diagnosis.js';
import { STATUSES } from './statuses.js';

const ACTIVE = STATUSES.active; // Stop is offered (filled from the server before the first draw)

// How a run's numbers read, in its row here and in the group's table.
export const fmt = {
  step: v => (v == null ? '—' : String(v)),
  loss: v => (v == null ? '—' : Math.abs(v) < 1e-3 && v !== 0 ? Number(v).toExponential(2) : Number(v).toPrecision(4)),
  pct: v => (v == null ? '—' : `${(100 * v).toFixed(1)}%`),
};

// "3 min 05 s" for a number of seconds.
export function duration(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, '0')} min`;
}

// Why a run ended badly, in words, or '' when it did not. A diverged run names
// the layer it diverged in: the origin (the first to depart from its own
// baseline, summary.diverged_layer), and since when; the worker's own words
// (run.error) are in the tooltip and the finish event (`full`: here too).
export function problem(run, full = false) {
  if (run.status === 'failed') return run.error || 'failed (no reason given)';
  const s = run.summary ?? {};
  if (run.status === 'diverged') {
    const where = s.diverged_layer ? ` in ${s.diverged_layer}` : '';
    const since = s.diverged_since != null && s.diverged_since < s.diverged_step ? ` (departing since step ${s.diverged_since})` : '';
    return `diverged at step ${s.diverged_step ?? '?'}${where}${since}` + (full && run.error ? `: ${run.error}` : '');
  }
  const stuck = notLearning(run);
  if (stuck) return `not learning: validation ${fmt.pct(stuck.val)} at the end, chance is ${fmt.pct(stuck.chance)}`;
  return '';
}

// The status badge: the status, except that a run which ended at chance says
// "not learning" (diagnosis.js) rather than a green "completed".
export function badge(run) {
  const stuck = notLearning(run);
  if (stuck) {
    return { text: 'not learning', cls: 'badge status-not-learning',
      title: `${run.status}, but its validation accuracy (${fmt.pct(stuck.val)}) is within 5 points of chance (${fmt.pct(stuck.chance)})` };
  }
  return { text: run.status, cls: `badge status-${run.status}`, title: '' };
}

// Set a node's properties, each only if it differs (writing the same text still replaces the
// node's text: a DOM mutation, and work for the browser).
export function setChanged(node, props) {
  for (const [k, v] of Object.entries(props)) if (node[k] !== v) node[k] = v;
}

// (The style reads back in another form, "rgb(…)" for "#4e79a7": compare with what was set.)
function setStyle(node, prop, value) {
  node.setStyles ??= {};
  if (node.setStyles[prop] === value) return;
  node.setStyles[prop] = value;
  node.style[prop] = value ?? '';
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class RunList {
  constructor(tbody, handlers) {
    this.tbody = tbody;
    this.rows = new Map(); // run id -> <tr>
    this.armed = null;     // id whose delete button was clicked once
    // A running run without a step for a while (the server's idle_s): when, on
    // this page's clock, its last step was, per record (records are replaced,
    // never changed, so a new record restarts the count from its own idle_s).
    this.idleFrom = new WeakMap();
    setInterval(() => this.tickIdle(), 1000);
    tbody.addEventListener('change', ev => {
      if (!ev.target.matches('input.select')) return;
      handlers.select(this.idOf(ev.target), ev.target.checked);
    });
    tbody.addEventListener('click', ev => {
      const button = ev.target.closest('button');
      if (!button) return;
      const id = this.idOf(button);
      if (button.matches('.focus')) handlers.focus(id);
      else if (button.matches('.stop')) handlers.stop(id);
      else if (button.matches('.retry')) handlers.retry?.(id);
      else if (button.matches('.delete')) this.confirmDelete(button, id, handlers.remove);
    });
  }

  idOf(node) { return node.closest('tr').dataset.runId; }

  // Deleting loses the run's data: the first click arms the button, a second
  // within 3 s deletes. (No confirm() dialog: it would block the live page.)
  confirmDelete(button, id, remove) {
    if (this.armed === id) {
      this.armed = null;
      remove(id);
      return;
    }
    this.armed = id;
    button.textContent = 'delete?';
    button.classList.add('armed');
    setTimeout(() => {
      if (this.armed === id) this.armed = null;
      button.textContent = '×';
      button.classList.remove('armed');
    }, 3000);
  }

  // runs: records newest first; view: {selected: Set, focus, colors: Map, alerts: Map (run id -> alerts the page has)}.
  render(runs, view) {
    const seen = new Set();
    runs.forEach((run, i) => {
      seen.add(run.id);
      let tr = this.rows.get(run.id);
      if (!tr) {
        tr = this.makeRow(run.id);
        this.rows.set(run.id, tr);
      }
      this.fill(tr, run, view);
      // Keep DOM order = list order without re-inserting rows that are in place.
      if (this.tbody.children[i] !== tr) this.tbody.insertBefore(tr, this.tbody.children[i] ?? null);
    });
    for (const [id, tr] of this.rows) {
      if (!seen.has(id)) { tr.remove(); this.rows.delete(id); }
    }
  }

  makeRow(id) {
    const tr = el('tr', 'run');
    tr.dataset.runId = id;
    const select = el('input', 'select');
    select.type = 'checkbox';
    select.title = 'compare on the charts';
    const name = el('td', 'name');
    name.append(el('span', 'swatch'), el('button', 'focus'), el('code', 'rid', id), el('div', 'forked'),
      el('div', 'problem'));
    const actions = el('td', 'actions');
    const stop = el('button', 'stop', 'Stop');
    const retry = el('button', 'retry', 'retry');
    retry.title = 'fork it from the last checkpoint before it diverged, with other settings';
    actions.append(retry);
    const del = el('button', 'delete', '×');
    del.title = 'delete this run and its data';
    actions.append(stop, del);
    const cell = (cls, child) => { const td = el('td', cls); if (child) td.append(child); return td; };
    const status = cell('status', el('span', 'badge'));
    status.append(el('div', 'idle'));
    tr.append(cell('sel', select), name, status,
      cell('num step'), cell('num loss'), cell('num acc'), cell('num best'), cell('num alerts'), actions);
    return tr;
  }

  // Writes only what differs from what the row shows: a live step changes a run's step, loss
  // and accuracy cells, and nothing else of the table is touched (no layout, no lost hover).
  fill(tr, run, view) {
    const s = run.summary ?? {};
    const q = sel => tr.querySelector(sel);
    const selected = view.selected.has(run.id);
    tr.classList.toggle('selected', selected);
    tr.classList.toggle('focused', view.focus === run.id);
    const box = q('input.select');
    if (box.checked !== selected) box.checked = selected;
    setStyle(q('.swatch'), 'background', view.colors.get(run.id));
    setChanged(q('button.focus'), { textContent: run.name || run.id, title: 'show details (and the heatmap) of this run' });
    const b = badge(run);
    setChanged(q('.badge'), { textContent: b.text, className: b.cls, title: b.title });
    setChanged(q('.problem'), { textContent: problem(run), title: problem(run, true) });
    if (run.idle_s != null && !this.idleFrom.has(run)) this.idleFrom.set(run, performance.now() - 1000 * run.idle_s);
    tr.idleFrom = run.idle_s != null ? this.idleFrom.get(run) : null;
    this.showIdle(tr);
    setChanged(q('.step'), { textContent: fmt.step(s.step) + (run.config?.steps ? ` / ${run.config.steps}` : '') });
    setChanged(q('.loss'), { textContent: fmt.loss(s.loss) });
    setChanged(q('.acc'), { textContent: fmt.pct(s.accuracy), title: 'the last batch' });
    setChanged(q('.best'), { textContent: fmt.pct(s.best_val_accuracy),
      title: s.val_accuracy == null ? 'no validation yet' : `the best validation accuracy; the last: ${fmt.pct(s.val_accuracy)}` });
    // Every alert episode counted (the details panel lists them, the first first).
    const n = Math.max(s.alerts ?? -1, view.alerts?.get(run.id) ?? -1);
    setChanged(q('.alerts'), { textContent: n >= 0 ? String(n) : '—',
      title: n > 0 ? `${n} alert${n > 1 ? 's' : ''}, the first at step ${s.first_alert_step ?? '?'}` : '' });
    q('.alerts').classList.toggle('some', n > 0);
    setChanged(q('.stop'), { hidden: !ACTIVE.has(run.status) });
    // Forks sit under their parent (view.depth: forks.js treeOrder), indented, saying from where.
    const depth = view.depth?.get(run.id) ?? 0;
    tr.classList.toggle('fork', depth > 0);
    setStyle(q('td.name'), 'paddingLeft', depth ? `${0.5 + 1.2 * depth}em` : '');
    setChanged(q('.forked'), { textContent: view.forkNote?.(run) ?? '' });
    setChanged(q('.retry'), { hidden: !(run.status === 'diverged' && s.checkpoint_before_divergence != null) });
  }

  showIdle(tr) {
    setChanged(tr.querySelector('.idle'), {
      textContent: tr.idleFrom == null ? '' : `no step for ${duration((performance.now() - tr.idleFrom) / 1000)}`,
      title: tr.idleFrom == null ? '' : 'its worker is alive, but no new step has come (a slow step, a stuck data loader, a debugger?)',
    });
  }

  tickIdle() {
    for (const tr of this.rows.values()) if (tr.idleFrom != null) this.showIdle(tr);
  }
}
