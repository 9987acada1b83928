// Ablation groups: the "Ablate BN × L2" request built from the launch form,
// the layout of a group's cells as a grid of what was varied, and the group
// card (its summary table; the small multiples are drawn by charts.js).

import { showValue } from './chips.js';
import { badge, fmt } from './runlist.js';
import { presetAbout, presetOf } from './presets.js';

// POST /api/groups body: the form's config, BatchNorm off/on x L2 0 / the
// form's L2 (0.01 when the form says 0); `preset`: {preset, variant} the form
// was filled from, which the group and its runs keep.
export function ablationBody(name, config, preset = {}) {
  const l2 = Number(config.l2) > 0 ? Number(config.l2) : 0.01;
  return {
    name: name || (preset.preset ? `${preset.preset} BN × L2` : 'BN × L2'),
    base: { ...config },
    vary: { batchnorm: [false, true], l2: [0, l2] },
    ...preset,
  };
}

// The axes of a group: its varied fields, then the seeds when there are several.
function axes(group) {
  const out = Object.entries(group.vary ?? {}).map(([field, values]) => ({ field, values }));
  if (group.seeds?.length > 1) out.push({ field: 'seed', values: group.seeds });
  return out;
}

// Cells as panels of a grid: rows = the first varied field's values, columns =
// every combination of the others. [{runId, title, panel (1-based)}] and {rows, cols}.
export function gridOf(group) {
  const ax = axes(group);
  const cells = group.cells ?? [];
  if (!ax.length) {
    const cols = Math.min(4, Math.max(1, cells.length));
    return {
      rows: Math.max(1, Math.ceil(cells.length / cols)), cols,
      cells: cells.map((c, i) => ({ runId: c.run_id, title: c.name, panel: i + 1 })),
    };
  }
  const [first, ...rest] = ax;
  const cols = rest.reduce((n, a) => n * a.values.length, 1);
  const at = (a, v) => a.values.findIndex(x => JSON.stringify(x) === JSON.stringify(v));
  const placed = cells.map((c, i) => {
    const v = c.values ?? {};
    let col = 0;
    for (const a of rest) col = col * a.values.length + Math.max(0, at(a, v[a.field]));
    const row = at(first, v[first.field]);
    const panel = row < 0 ? i + 1 : row * cols + col + 1;
    const title = ax.map(a => `${a.field} ${showValue(v[a.field])}`).join(' · ');
    return { runId: c.run_id, title, panel };
  });
  return { rows: first.values.length, cols, cells: placed };
}

export class GroupPanel {
  // onPick(id | null): a group chosen in the picker; onFocus(runId).
  constructor(root, picker, { onPick, onFocus }) {
    this.root = root;
    this.picker = picker;
    this.tbody = root.querySelector('tbody');
    this.title = root.querySelector('.group-title');
    this.about = root.querySelector('.group-about');
    this.presetBox = root.querySelector('.group-preset');
    this.presets = [];
    picker.addEventListener('change', () => onPick(picker.value || null));
    root.querySelector('.close').addEventListener('click', () => onPick(null));
    this.tbody.addEventListener('click', ev => {
      const button = ev.target.closest('button.focus');
      if (button) onFocus(button.closest('tr').dataset.runId);
    });
  }

  setPresets(presets) { this.presets = presets; this.presetKey = null; }

  // groups: GET /api/groups, newest first; current: the state's group id.
  setGroups(groups, current) {
    const key = JSON.stringify([groups.map(g => [g.id, g.name]), current]);
    if (this.picker.dataset.key === key) return;
    this.picker.dataset.key = key;
    const options = [new Option(groups.length ? '— none —' : 'no groups yet', '')];
    for (const g of groups) options.push(new Option(`${g.name} (${g.id})`, g.id));
    if (current && !groups.some(g => g.id === current)) options.push(new Option(current, current));
    this.picker.replaceChildren(...options);
    this.picker.value = current ?? '';
  }

  // group: GET /api/groups/{id} (or null: hide); runs: id -> run record (live);
  // series: id -> RunSeries; colors: id -> color; focus: the focused run id.
  render(group, { runs, series, colors, focus }) {
    const was = this.root.hidden;
    this.root.hidden = !group;
    if (!group) return was !== this.root.hidden;
    this.title.textContent = group.name;
    const vary = Object.entries(group.vary ?? {}).map(([f, vs]) => `${f} ∈ {${vs.map(showValue).join(', ')}}`);
    this.about.textContent = `${group.id} · ${vary.join(' × ') || 'no varied fields'}`
      + (group.seeds?.length ? ` × seeds {${group.seeds.join(', ')}}` : '');
    this.renderPreset(group);
    const { cells: placed } = gridOf(group);
    const titles = new Map(placed.map(c => [c.runId, c.title]));
    const rows = (group.cells ?? []).map(cell => this.row(cell, titles.get(cell.run_id), {
      run: runs.get(cell.run_id), s: series.get(cell.run_id), color: colors.get(cell.run_id), focus,
    }));
    const key = JSON.stringify(rows);
    if (this.tbody.dataset.key !== key) {
      this.tbody.dataset.key = key;
      this.tbody.replaceChildren(...rows.map(r => this.tr(r)));
    }
    return was !== this.root.hidden;
  }

  // A group started from a preset: what the preset explains, above its cells.
  renderPreset(group) {
    const found = presetOf(group.preset, this.presets);
    const key = JSON.stringify([group.id, group.preset, Boolean(found)]);
    if (this.presetKey === key) return;
    this.presetKey = key;
    this.presetBox.hidden = !found;
    this.presetBox.replaceChildren(...(found ? presetAbout(found.preset, found.variant) : []));
  }

  // One summary row: live numbers from the run record and its buffers where
  // the page has them, the group answer's otherwise.
  row(cell, title, { run, s, color, focus }) {
    const sum = run?.summary ?? {};
    const val = s?.valAccuracy?.filter(v => v != null) ?? [];
    const best = Math.max(cell.best_val_accuracy ?? -Infinity, sum.best_val_accuracy ?? -Infinity, ...val);
    const b = badge(run ?? { status: cell.status, summary: {} });
    // A live run's record counts alerts from its first one on; its buffers have every one.
    const alerts = Math.max(sum.alerts ?? cell.alerts ?? -1, s?.alerts?.length ?? -1);
    return {
      id: cell.run_id, title: title ?? cell.name, color: color ?? '#8b949e', focused: focus === cell.run_id,
      status: b.text, statusClass: b.cls, statusTitle: b.title,
      step: sum.step ?? cell.step,
      diverged: sum.diverged_step ?? cell.diverged_step,
      divergedIn: sum.diverged_layer ?? null,
      loss: sum.loss ?? cell.final_loss,
      best: Number.isFinite(best) ? best : null,
      alerts: alerts >= 0 ? alerts : null,
    };
  }

  tr(r) {
    const tr = document.createElement('tr');
    tr.dataset.runId = r.id;
    tr.className = r.focused ? 'focused' : '';
    const td = (cls, text) => Object.assign(document.createElement('td'), { className: cls, textContent: text });
    const name = td('name', '');
    const sw = Object.assign(document.createElement('span'), { className: 'swatch' });
    sw.style.background = r.color;
    const button = Object.assign(document.createElement('button'), { className: 'focus', textContent: r.title, title: 'show the details of this run' });
    name.append(sw, button);
    const status = td('status', '');
    status.append(Object.assign(document.createElement('span'), { className: r.statusClass, textContent: r.status, title: r.statusTitle }));
    const diverged = td('num diverged', r.diverged == null ? '—' : String(r.diverged));
    if (r.divergedIn) diverged.title = `diverged in ${r.divergedIn} (the layer that departed first)`;
    tr.append(name, status, td('num step', r.step == null ? '—' : String(r.step)), diverged,
      td('num alerts', r.alerts == null ? '—' : String(r.alerts)),
      td('num loss', fmt.loss(r.loss)), td('num best', fmt.pct(r.best)));
    return tr;
  }
}
