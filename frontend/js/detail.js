// The details panel of the focused run: status and why it ended badly (the
// layer it diverged in, and the layers that departed most), what its preset
// explains, its config, CSV/JSON export links, every alert episode (the first
// first), its recent other events (interventions, the finish), and, while it
// runs, a small form that changes l2 / lr / grad_clip before its next step
// (PATCH /api/runs/{id}; the worker applies it and logs an intervention).

import { STATUSES } from './statuses.js';
import { badge, problem, setChanged } from './runlist.js';
import { alertEpisodes } from './diagnosis.js';
import { presetAbout, presetOf } from './presets.js';
import { short } from './markers.js';

const LIVE_FIELDS = ['l2', 'lr', 'grad_clip'];

// One line per event (trainer/events.py defines them).
export function describe(e) {
  const at = e.step != null ? `step ${e.step} · ` : '';
  switch (e.type) {
    case 'alert': return `${at}alert: ${e.message ?? e.kind}`;
    case 'alert.end': return `${at}alert ${e.episode ?? ''} over: peak ×${short(e.peak_ratio)} at step ${e.peak_step}`;
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

const KINDS = { grad_spike: 'gradient spike', loss_spike: 'loss spike', nonfinite: 'non-finite', explosion: 'explosion' };

// One alert episode in a line: where it started, what, in which layer and how far
// from its baseline, the runners-up, and (once it is over) its peak.
export function describeEpisode(ep) {
  const what = KINDS[ep.kind] ?? ep.kind;
  const where = ep.layer ? ` in ${ep.layer}` : '';
  const ratio = Number.isFinite(ep.ratio) ? ` ×${short(ep.ratio)}` : '';
  const others = ep.top.filter(t => t.layer !== ep.layer).slice(0, 2)
    .map(t => `${t.layer} ×${short(t.ratio)}`).join(', ');
  const peak = ep.end ? ` · peak ×${short(ep.end.peak_ratio)} at step ${ep.end.peak_step}` : '';
  const head = ep.layer || ratio ? `${what}${where}${ratio}` : ep.message;
  return `step ${ep.step} · ${head}${others ? ` (then ${others})` : ''}${peak}`;
}

// The values a run trains with now: its config, then every intervention since.
function liveValues(run, events) {
  const values = Object.fromEntries(LIVE_FIELDS.map(f => [f, run.config?.[f]]));
  for (const e of events) if (e.type === 'intervention' && e.field in values) values[e.field] = e.new;
  return values;
}

const sameList = (a, b) => Array.isArray(b) && a.length === b.length && a.every((v, i) => v === b[i]);

export class DetailPanel {
  // api: createApi(); onCopy(run): fill the launch form from a run; onStep(step): show that
  // step (an alert's: the layer profiles and the step line go there).
  constructor(root, { api, onCopy, onStep }) {
    this.root = root;
    this.run = null;
    this.presets = [];    // GET /api/presets, once loaded
    this.shownFor = null; // run id whose live values the inputs hold
    const q = sel => root.querySelector(sel);
    this.el = {
      name: q('.detail-name'), status: q('.badge'), problem: q('.problem'), config: q('.config'),
      top: q('.top-layers'), preset: q('.run-preset'), alerts: q('.alerts'), alertsTitle: q('.alerts-title'),
      events: q('.events'), change: q('form.live'), changeError: q('form.live .form-error'),
    };
    this.api = api;
    this.exports = [...root.querySelectorAll('a.export')];
    q('.copy-config').addEventListener('click', () => this.run && onCopy(this.run));
    this.el.change.addEventListener('submit', ev => { ev.preventDefault(); this.apply(api); });
    this.el.alerts.addEventListener('click', ev => {
      const b = ev.target.closest('button.episode');
      if (b) onStep(Number(b.dataset.step));
    });
  }

  setPresets(presets) { this.presets = presets; this.presetKey = null; }

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

  // run: the focused run record or undefined; s: its RunSeries (events, alerts) or undefined.
  render(run, color, s) {
    this.run = run ?? null;
    this.root.hidden = !run;
    if (!run) return;
    const events = s?.events ?? [];
    const el = this.el;
    // Every write only where something changed (this runs on live steps too).
    setChanged(el.name, { textContent: run.name || run.id });
    if (el.name.dataset.color !== (color ?? '')) {
      el.name.dataset.color = color ?? '';
      el.name.style.color = color ?? '';
    }
    const b = badge(run);
    setChanged(el.status, { textContent: b.text, className: b.cls, title: b.title });
    setChanged(el.problem, { textContent: problem(run), title: problem(run, true) });
    this.renderTop(run);
    this.renderPreset(run);
    this.renderAlerts(run, s);
    for (const a of this.exports) {
      if (a.dataset.run === run.id) continue;
      a.dataset.run = run.id;
      a.href = this.api.exportUrl(run.id, a.dataset.format);
      a.download = `gradwatch-${run.id}.${a.dataset.format}`;
    }
    // Which GPU its worker was given, on a machine with several (while it runs).
    // A run from a person's own loop has only the fields it sent, and may send lists or objects.
    const config = Object.entries(run.config ?? {}).filter(([, v]) => v != null)
      .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join('  ')
      + (run.gpu != null ? `  (on GPU ${run.gpu})` : '');
    if (el.config.textContent !== config) el.config.textContent = config;

    const lines = events.filter(e => e.type !== 'alert' && e.type !== 'alert.end').slice(-20).reverse().map(describe);
    if (!sameList(lines, this.eventLines)) {
      this.eventLines = lines;
      el.events.replaceChildren(...lines.map(text => Object.assign(document.createElement('li'), { textContent: text })));
    }

    // Live changes: built-in (local) runs that are still going (a stalled one gets them when it wakes).
    const live = STATUSES.active.has(run.status) && (run.kind ?? 'local') === 'local';
    setChanged(el.change, { hidden: !live });
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

  // A diverged run: the layers that had departed most from their own baselines at its last
  // finite step (summary.diverged_top); the origin, named above, is where it began.
  renderTop(run) {
    const top = run.status === 'diverged' ? run.summary?.diverged_top ?? [] : [];
    const text = top.length ? 'departed most at the last finite step: '
      + top.map(t => `${t.layer} ×${short(t.ratio)}`).join(', ') : '';
    if (this.el.top.textContent !== text) this.el.top.textContent = text;
  }

  // A run started from a preset: which, the variant, and what the preset says to look at.
  renderPreset(run) {
    const found = presetOf(run.preset, this.presets);
    const key = JSON.stringify([run.preset, Boolean(found)]);
    if (this.presetKey === key) return;
    this.presetKey = key;
    const box = this.el.preset;
    box.hidden = !run.preset;
    if (!run.preset) { box.replaceChildren(); return; }
    const head = document.createElement('p');
    head.className = 'from';
    const changed = run.preset.changed?.length ? ` (changed: ${run.preset.changed.join(', ')})` : '';
    head.textContent = `preset ${run.preset.name}` + (run.preset.variant ? ` · variant ${found?.variant?.title ?? run.preset.variant}` : '') + changed;
    box.replaceChildren(head, ...(found ? presetAbout(found.preset, found.variant) : []));
  }

  // Every alert episode, the first first; a click shows its step.
  renderAlerts(run, s) {
    const episodes = alertEpisodes(s?.alerts ?? [], s?.alertEnds ?? []);
    const total = Math.max(run.summary?.alerts ?? 0, episodes.length);
    const title = total ? `Alerts (${total})` : 'Alerts';
    if (this.el.alertsTitle.textContent !== title) this.el.alertsTitle.textContent = title;
    const shown = [run.id, ...episodes.map(ep => `${ep.step} ${describeEpisode(ep)}`)];
    if (sameList(shown, this.alertsShown)) return;
    this.alertsShown = shown;
    this.el.alerts.replaceChildren(...episodes.map(ep => {
      const li = document.createElement('li');
      const b = Object.assign(document.createElement('button'), {
        type: 'button', className: `episode ${ep.kind}`, textContent: describeEpisode(ep),
        title: `${ep.message}\n(click: the layer profiles at step ${ep.step})`,
      });
      b.dataset.step = ep.step;
      li.append(b);
      return li;
    }));
  }
}
