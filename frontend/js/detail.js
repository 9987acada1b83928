// The details panel of the focused run: status and why it ended badly, its
// config, CSV/JSON export links, its recent events (alerts, interventions, the finish), and, while
// it runs, a small form that changes l2 / lr / grad_clip before its next step
// (PATCH /api/runs/{id}; the worker applies it and logs an intervention).

import { problem } from './runlist.js';

const LIVE_FIELDS = ['l2', 'lr', 'grad_clip'];

// One line per event (trainer/events.py defines them).
export function describe(e) {
  const at = e.step != null ? `step ${e.step} · ` : '';
  switch (e.type) {
    case 'alert': return `${at}alert: ${e.message ?? e.kind}`;
    case 'intervention': return `${at}${e.field} ${e.old} → ${e.new}` + (e.source ? ` (by ${e.source})` : '');
    case 'run.finished': return `${at}finished: ${e.status}` + (e.reason ? `: ${e.reason}` : '');
    case 'dropped': return `${e.count} steps not sent (${e.first_step}–${e.last_step}): the worker's buffer was full`;
  }
  // Unknown kinds: show their plain fields rather than nothing.
  const { type, seq, step, run_id, time, ...rest } = e;
  const what = Object.entries(rest).filter(([, v]) => v !== null && typeof v !== 'object')
    .map(([k, v]) => `${k}=${v}`).join(' ');
  return `${at}${type}: ${what}`;
}

// The values a run trains with now: its config, then every intervention since.
function liveValues(run, events) {
  const values = Object.fromEntries(LIVE_FIELDS.map(f => [f, run.config?.[f]]));
  for (const e of events) if (e.type === 'intervention' && e.field in values) values[e.field] = e.new;
  return values;
}

export class DetailPanel {
  // api: createApi(); onCopy(run): fill the launch form from a run.
  constructor(root, { api, onCopy }) {
    this.root = root;
    this.run = null;
    this.shownFor = null; // run id whose live values the inputs hold
    const q = sel => root.querySelector(sel);
    this.el = {
      name: q('.detail-name'), status: q('.badge'), problem: q('.problem'), config: q('.config'),
      events: q('.events'), change: q('form.live'), changeError: q('form.live .form-error'),
    };
    this.api = api;
    this.exports = [...root.querySelectorAll('a.export')];
    q('.copy-config').addEventListener('click', () => this.run && onCopy(this.run));
    this.el.change.addEventListener('submit', ev => { ev.preventDefault(); this.apply(api); });
  }

  // Send the fields the person changed; the panel shows the intervention when it lands.
  async apply(api) {
    const run = this.run;
    const changes = {};
    for (const field of LIVE_FIELDS) {
      const input = this.el.change.elements.namedItem(field);
      const value = Number(input.value);
      if (input.value.trim() !== '' && value !== Number(input.dataset.current)) changes[field] = value;
    }
    this.el.changeError.textContent = '';
    if (!run || !Object.keys(changes).length) return;
    try {
      await api.changeRun(run.id, changes);
      this.shownFor = null; // refill from the run once its intervention arrives
    } catch (err) {
      const detail = Array.isArray(err.detail)
        ? err.detail.map(d => `${d.loc?.[d.loc.length - 1] ?? ''}: ${d.msg}`).join('; ')
        : err.message;
      this.el.changeError.textContent = detail;
    }
  }

  // run: the focused run record or undefined; events: its RunSeries events.
  render(run, color, events = []) {
    this.run = run ?? null;
    this.root.hidden = !run;
    if (!run) return;
    const el = this.el;
    el.name.textContent = run.name || run.id;
    el.name.style.color = color ?? '';
    el.status.textContent = run.status;
    el.status.className = `badge status-${run.status}`;
    el.problem.textContent = problem(run);
    for (const a of this.exports) {
      a.href = this.api.exportUrl(run.id, a.dataset.format);
      a.download = `gradwatch-${run.id}.${a.dataset.format}`;
    }
    // Which GPU its worker was given, on a machine with several (while it runs).
    const config = Object.entries(run.config ?? {}).map(([k, v]) => `${k}=${v}`).join('  ')
      + (run.gpu != null ? `  (on GPU ${run.gpu})` : '');
    if (el.config.textContent !== config) el.config.textContent = config;

    const lines = events.slice(-20).reverse().map(describe);
    const key = lines.join('\n');
    if (el.events.dataset.key !== key) {
      el.events.dataset.key = key;
      el.events.replaceChildren(...lines.map(text => Object.assign(document.createElement('li'), { textContent: text })));
    }

    // Live changes: built-in (local) runs that are still going (a stalled one gets them when it wakes).
    const live = ['queued', 'running', 'stalled'].includes(run.status) && (run.kind ?? 'local') === 'local';
    el.change.hidden = !live;
    const values = liveValues(run, events);
    const valuesKey = `${run.id}:${JSON.stringify(values)}`;
    // Refill only for another run or new values, never under the person's typing.
    const typing = document.activeElement?.tagName === 'INPUT' && el.change.contains(document.activeElement);
    if (live && this.shownFor !== valuesKey && !typing) {
      this.shownFor = valuesKey;
      for (const field of LIVE_FIELDS) {
        const input = el.change.elements.namedItem(field);
        input.value = values[field] ?? '';
        input.dataset.current = values[field] ?? '';
      }
    }
  }
}
