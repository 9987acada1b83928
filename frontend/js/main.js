// Wiring: the URL state, the REST/websocket client, the run records and
// their buffers, and the page's parts (runs table, launch form, details
// panel, group card, chips, settings, scrubber, charts).

import './plotsafe.js'; // first: every text handed to Plotly is escaped (see there)
import { createState } from './state.js';
import { heatmapStats, isHeatmapStat, isLinear, loadStats } from './stats.js';
import { toggleOpen } from './layers.js';
import { ColorBook, hashColor } from './colors.js';
import { createApi, ApiError, Stream } from './api.js';
import { STATUSES, loadStatuses } from './statuses.js';
import { RunSeries } from './series.js';
import { Charts } from './charts.js';
import { RunList } from './runlist.js';
import { DetailPanel } from './detail.js';
import { GroupPanel, ablationBody, gridOf } from './group.js';
import { renderChips, commonPrefix } from './chips.js';
import { Scrubber } from './scrubber.js';
import { runMarks } from './markers.js';
import { downloadPng, themeRelayout } from './plot.js';
import { PresetPicker } from './presets.js';
import { blowUpRange } from './diagnosis.js';
import { readForm, fillForm, clearErrors, showErrors, detailErrors, buildForm, applyBounds } from './form.js';
import { ForkPanel, Prefixes, forkNote, retrySuggestion, treeOrder } from './forks.js';

const $ = sel => document.querySelector(sel);

// Signed out (a sign-out, a server restart, a session unused for 12 h): sign in
// again on /login, which comes back to this view.
const toLogin = () => location.replace(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
const api = createApi(new URLSearchParams(location.search).get('token'), globalThis.location, { unauthorized: toLogin });
const state = createState();
const runs = new Map();   // run id -> run record (docs/api.md), as the server last said
const series = new Map(); // run id -> RunSeries, for the selected runs only
const charts = new Charts(api);
const form = $('#launch');
let colors = new Map();
// A run keeps its color across views and reloads (colors.js): what each run was shown in is
// remembered in this browser.
const COLOR_KEY = 'gradwatch.colors';
const colorBook = new ColorBook((() => {
  try { return JSON.parse(localStorage.getItem(COLOR_KEY) ?? '[]'); } catch { return []; }
})());
function saveColors() {
  if (!colorBook.changed) return;
  colorBook.changed = false;
  try { localStorage.setItem(COLOR_KEY, JSON.stringify(colorBook.saved())); } catch { /* storage off or full: this page still remembers */ }
}
let groups = [];          // GET /api/groups
let group = null;         // GET /api/groups/{state.group}, or null

// Steps of history to ask for: a little more than one per pixel of the line
// charts (Plotly's redraw cost grows with the points; more would not show).
const historyPoints = () => Math.max(300, Math.min(1500, Math.round(1.2 * ($('#chart-loss').clientWidth || 600))));

const runList = new RunList($('#runs tbody'), {
  select: (id, on) => select(id, on),
  focus: id => focus(id),
  stop: id => act(() => api.stopRun(id).then(upsert)),
  remove: id => act(() => api.deleteRun(id).then(() => forget(id))),
  retry: id => {
    const run = runs.get(id);
    const suggest = retrySuggestion(run);
    if (suggest) forkPanel.open(run, suggest.step, suggest);
  },
});

// Forks: a fork is drawn over its parent's steps before the fork step (faintly), and
// made from a click on a step chart (or a diverged run's "retry"); it is then shown
// beside its parent, focused.
const prefixes = new Prefixes(api, () => render());
const forkPanel = new ForkPanel(api, {
  onForked(fork, parent) {
    upsert(fork);
    const selected = state.get().selected.filter(id => id !== fork.id && id !== parent.id);
    state.set({ selected: [...selected, parent.id, fork.id], focus: fork.id, heatmap: null });
  },
});
for (const fig of charts.lines) {
  fig.div.on('plotly_click', ev => {
    const p = clickedPoint(fig.div, ev);
    if (!p || !Number.isFinite(p.x)) return;
    const { selected, focus: f } = state.get();
    const id = p.data?.legendgroup || f || selected[selected.length - 1];
    const run = runs.get(id);
    if (run?.kind === 'local') forkPanel.open(run, p.x);
  });
}

// The point a click on a line chart meant. The charts hover every run at a step at once
// (lines.js), so a click brings a point of each: the run's line nearest the pointer wins.
function clickedPoint(div, ev) {
  const points = (ev?.points ?? []).filter(p => p.data?.legendgroup && Number.isFinite(p.y));
  const box = div.getBoundingClientRect();
  const y = ev?.event?.clientY;
  const off = p => {
    const at = p.yaxis?.c2p?.(p.y);
    return Number.isFinite(at) && Number.isFinite(y) ? Math.abs(box.top + div._fullLayout._size.t + at - y) : Infinity;
  };
  return points.reduce((best, p) => (!best || off(p) < off(best) ? p : best), null) ?? ev?.points?.[0];
}

const detail = new DetailPanel($('#detail'), {
  api,
  onCopy: run => {
    fillForm(form, run.config ?? {}, run.name ? `${run.name} (copy)` : '');
    presets.show(run.preset); // a copy of a preset run is still that preset's (with what changed)
  },
  onStep: step => state.set({ step }),
});

const groupPanel = new GroupPanel($('#group'), $('#group-pick'), {
  onPick: id => pickGroup(id),
  onFocus: id => focus(id),
});

const scrubber = new Scrubber($('#scrubber'), step => state.set({ step }));

const stream = new Stream(api, {
  run(msg) {
    if (msg.type === 'run.deleted') forget(msg.run_id);
    else upsert(msg.run);
  },
  history(id, cols, since) {
    const s = series.get(id);
    if (!s) return;
    s.addHistory(cols, since);
    const last = s.length - 1;
    if (last >= 0) latest(id, s.step.get(last), s.loss.get(last), s.accuracy.get(last));
    charts.touch();
    render();
  },
  event(msg) {
    series.get(msg.run_id)?.addEvent(msg);
    if (msg.type === 'metrics') latest(msg.run_id, msg.step, msg.loss, msg.accuracy);
    else render(); // a marker, a status: the views below change
    charts.touch();
  },
  gone: id => forget(id),
  open(reconnected) {
    // Status changes made while the socket was down are only in the store;
    // and if the first list request failed (server not up yet), this retries it.
    if (reconnected || !listed) loadRuns();
  },
  resync: () => loadRuns(),
  connection(status, info) {
    const conn = $('#conn');
    conn.className = `conn ${status}`;
    conn.textContent = status === 'reconnecting' && info
      ? `reconnecting in ${(info.delay / 1000).toFixed(1)} s` + (info.reason ? ` (${info.reason})` : '')
      : status;
  },
}, { maxPoints: historyPoints });

// ---- runs and selection

function newestFirst() {
  return [...runs.values()].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
}

// Metrics arrive every step, run.update less often: keep the row's numbers
// at the newest step the page has seen.
function latest(id, step, loss, accuracy) {
  const run = runs.get(id);
  const num = v => (Number.isFinite(v) ? v : null);
  if (run && step > (run.summary?.step ?? -1)) {
    run.summary = { ...run.summary, step, loss: num(loss), accuracy: num(accuracy) };
    render();
  }
}

const ENDED = STATUSES.terminal;

// An older view of a run than the one the page has: a REST answer (Stop's,
// say: "running") that comes after the stream already said "stopped".
function older(run, known) {
  if (!known) return false;
  return (run.last_seq ?? 0) < (known.last_seq ?? 0) || (ENDED.has(known.status) && !ENDED.has(run.status));
}

function upsert(run) {
  if (!run?.id || older(run, runs.get(run.id))) return;
  // A run.update's summary can be older than the metrics events already
  // shown for a watched run; keep the newer step's numbers.
  const old = runs.get(run.id)?.summary;
  if (old && (old.step ?? -1) > (run.summary?.step ?? -1)) {
    run.summary = { ...run.summary, step: old.step, loss: old.loss, accuracy: old.accuracy };
  }
  const known = runs.has(run.id);
  runs.set(run.id, run);
  if (run.group_id && !groups.some(g => g.id === run.group_id)) loadGroups();
  if (group && run.group_id === group.id && (!known || !group.cells.some(c => c.run_id === run.id))) refreshGroup();
  render();
}

function forget(id) {
  runs.delete(id);
  colorBook.forget(id);
  prefixes.forget(id);
  charts.forget(id);
  const { selected, focus: f, heatmap } = state.get();
  state.set({
    selected: selected.filter(s => s !== id),
    focus: f === id ? null : f,
    heatmap: heatmap === id ? null : heatmap,
  });
  if (group?.cells.some(c => c.run_id === id)) refreshGroup();
  render();
}

// What a fresh page shows before the person picks anything (initialSelection: what is
// running, else the newest run) is only a first view: the first run they tick, or start,
// begins their own comparison instead of joining it. Any other change of the selection
// (unticking, a group, a fork, a link) makes the selection theirs.
let arrival = false;

function select(id, on) {
  if (arrival && on) {
    state.set({ selected: [id] });
    return;
  }
  const selected = state.get().selected.filter(s => s !== id);
  if (on) selected.push(id); // last = most recently selected
  state.set({ selected });
}

function focus(id) {
  if (!state.get().selected.includes(id)) select(id, true);
  state.set({ focus: id, heatmap: null }); // the heatmap follows the focus again
}

// A button's request: show a failure instead of swallowing it.
function act(request) {
  request().catch(err => flash(err instanceof ApiError ? `${err.status}: ${err.message}` : String(err)));
}

// A failure the person should see. `sticky` ones (a wrong token) stay until
// the next notice; others fade after a few seconds.
function flash(text, sticky = false) {
  const note = $('#notice');
  note.textContent = text;
  note.hidden = false;
  clearTimeout(flash.timer);
  if (!sticky) flash.timer = setTimeout(() => { note.hidden = true; }, 6000);
}

// The run whose heatmap is shown: the one chosen, else the focused one, else
// the most recently selected.
function heatmapRun() {
  const { selected, focus: f, heatmap } = state.get();
  if (selected.includes(heatmap)) return heatmap;
  if (selected.includes(f)) return f;
  return selected[selected.length - 1] ?? null;
}

// ---- groups

async function loadGroups() {
  if (loadGroups.busy) return;
  loadGroups.busy = true;
  try {
    groups = await api.listGroups();
  } catch (err) {
    console.warn('gradwatch: listing groups failed:', err);
  } finally {
    loadGroups.busy = false;
  }
  render();
}

// Refetch the shown group (its cells, their summaries), coalesced.
function refreshGroup() {
  if (refreshGroup.timer) return;
  refreshGroup.timer = setTimeout(async () => {
    refreshGroup.timer = null;
    const id = state.get().group;
    if (!id) { setGroup(null); return; }
    try {
      const g = await api.group(id);
      if (state.get().group === id) setGroup(g);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) state.set({ group: null });
      else console.warn('gradwatch: loading group failed:', err);
    }
  }, 50);
}

function setGroup(g) {
  group = g;
  const grid = g ? gridOf(g) : { rows: 1, cols: 1, cells: [] };
  charts.setGroup(grid.cells, grid);
  for (const run of g?.runs ?? []) if (!runs.has(run.id)) runs.set(run.id, run);
  render();
}

// Picking a group selects its runs (overlaid on the main charts) and shows its card.
async function pickGroup(id) {
  if (!id) { state.set({ group: null }); return; }
  try {
    const g = await api.group(id);
    for (const run of g.runs) upsert(run);
    const ids = g.runs.map(r => r.id);
    state.set({ group: id, selected: ids, focus: ids.includes(state.get().focus) ? state.get().focus : ids[0] ?? null, heatmap: null });
    setGroup(g);
  } catch (err) {
    flash(err instanceof ApiError ? `${err.status}: ${err.message}` : String(err));
  }
}

// While cells train, the group's answer (best validation accuracy) is refetched now and then.
setInterval(() => {
  const active = c => STATUSES.active.has(runs.get(c.run_id)?.status ?? c.status);
  if (group?.cells.some(active)) refreshGroup();
}, 3000);

// ---- state -> charts

// State changed: keep buffers, the stream's filter and the charts in step.
function applyState() {
  const { selected } = state.get();
  for (const id of series.keys()) if (!selected.includes(id)) series.delete(id);
  // Live steps pile up to twice what history brings, then every other one goes.
  for (const id of selected) if (!series.has(id)) series.set(id, new RunSeries(id, 2 * historyPoints()));
  stream.setWatched(selected);
  updateViews();
}

// What the charts draw for each selected run: its buffers, color, and markers.
function updateViews() {
  const { selected, focus: f, smooth, scale, step, stat, layers, relative, filter, agg, open } = state.get();
  colors = colorBook.assign([...runs.values()], selected);
  saveColors();
  // Legends name runs without what all their names share (a group's "BN × L2: ").
  const prefix = commonPrefix(selected.map(id => runs.get(id)?.name || id));
  charts.setRuns(selected.map(id => {
    const s = series.get(id);
    const run = runs.get(id);
    const marks = runMarks(s, run);
    return {
      id, name: (run?.name || id).slice(prefix.length), color: colors.get(id) ?? hashColor(id), focused: id === f, series: s,
      diverged: run?.status === 'diverged', // its loss and gradient norm axes go log by themselves
      prefix: prefixes.get(run), // a fork: its parent's steps before the fork step
      // What is drawn, not how often alerts fired: one more alert in a merged marker redraws nothing.
      marks, marksKey: marks.map(m => `${m.kind}@${m.step}${m.kind === 'alert' ? '' : `:${m.label}`}`).join(','),
    };
  }));
  charts.setView({ smooth, scale, step, stat, layers, relative, filter, agg, open, heatRun: heatmapRun(), xrange: xRange().range });
}

// The steps every step chart shows: the person's zoom, all of them, or (when
// they have not chosen) the steps around an early blow-up of a shown run.
function xRange() {
  const { x, selected } = state.get();
  const blowUp = blowUpRange(selected.map(id => runs.get(id)).filter(Boolean));
  if (Array.isArray(x)) return { range: x, why: 'zoom', blowUp };
  if (x === 'full' || !blowUp) return { range: null, why: 'all', blowUp };
  return { range: blowUp, why: 'blow-up', blowUp };
}

state.subscribe((s, changed) => {
  if (changed.includes('selected')) arrival = false; // (initialSelection sets it after its own change)
  if (changed.includes('group')) refreshGroup();
  applyState();
  render();
});

// ---- rendering (coalesced: run.update and metrics can come every step)

// At most 20 passes a second: a live row trails its run by up to this much more than the socket
// (issue 14 asks for 0.5 s in all), and each pass writes only what changed.
const RENDER_MS = 50;
let renderTimer = null;
function render() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    const { selected, focus: f } = state.get();
    updateViews();
    // A live run's record counts alerts from its first one on; the page has every alert of the runs it draws.
    const alerts = new Map([...series].map(([id, sr]) => [id, sr.alerts.length]));
    const tree = treeOrder(newestFirst()); // forks under their parents
    runList.render(tree.order, { selected: new Set(selected), focus: f, colors, alerts, depth: tree.depth,
      forkNote: run => forkNote(run, runs) });
    $('#runs-empty').hidden = runs.size > 0;
    renderHeatmapSelect();
    renderSettings();
    renderChips($('#chips'), selected.map(id => ({
      id, name: runs.get(id)?.name || id, color: colors.get(id), focused: id === f, config: runs.get(id)?.config ?? {},
    })), focus, arrival ? 'shown on arrival: the first run you tick starts your own comparison' : '');
    renderScrubber();
    groupPanel.setGroups(groups, state.get().group);
    if (groupPanel.render(group, { runs, series, colors, focus: f }) && group) {
      globalThis.Plotly.Plots.resize($('#chart-group')); // drawn while hidden: size it now
    }
    detail.render(runs.get(f), colors.get(f), series.get(f));
  }, RENDER_MS);
}

function renderHeatmapSelect() {
  const pick = $('#heatmap-run');
  const { selected, stat } = state.get();
  // The options are rebuilt only when the runs or their names changed (compared option by option).
  const names = selected.map(id => runs.get(id)?.name || id);
  const opts = pick.options;
  if (opts.length !== selected.length || selected.some((id, i) => opts[i].value !== id || opts[i].text !== names[i])) {
    pick.replaceChildren(...selected.map((id, i) => new Option(names[i], id)));
  }
  const value = heatmapRun() ?? '';
  if (pick.value !== value) pick.value = value;
  if (pick.disabled !== !selected.length) pick.disabled = !selected.length;
  $('#heatmap-stat').value = stat;
}

function renderSettings() {
  const { smooth, scale, layers, relative, stat, filter, agg } = state.get();
  $('#weights-only').checked = $('#heatmap-weights').checked = layers === 'weights';
  const box = $('#layer-filter');
  if (document.activeElement !== box && box.value !== filter) box.value = filter;
  $('#layer-agg').value = agg;
  $('#heatmap-relative').checked = relative;
  $('#heatmap-relative').disabled = isLinear(stat); // a fraction: drawn as it is
  renderXRange();
  const slider = $('#smooth');
  if (document.activeElement !== slider) slider.value = smooth;
  $('#smooth-value').textContent = smooth.toFixed(2);
  for (const b of document.querySelectorAll('[data-scale]')) b.setAttribute('aria-pressed', String(b.dataset.scale === scale));
}

// The note on which steps the charts show, with the way back to all of them
// (or to the blow-up, once the person left it).
function renderXRange() {
  const { range, why, blowUp } = xRange();
  const box = $('#xrange');
  const steps = r => `${Math.round(r[0])}–${Math.round(r[1])}`;
  const text = why === 'blow-up' ? `steps ${steps(range)}: around the blow-up`
    : why === 'zoom' ? `steps ${steps(range)}` : blowUp ? 'all steps' : '';
  box.hidden = !text;
  box.classList.toggle('focused', why === 'blow-up');
  box.querySelector('.what').textContent = text;
  box.querySelector('.all').hidden = why === 'all';
  box.querySelector('.blowup').hidden = !blowUp || why === 'blow-up';
}

function renderScrubber() {
  const { selected, step } = state.get();
  let min = null, max = null;
  const marks = [];
  for (const id of selected) {
    const s = series.get(id);
    if (!s?.length) continue;
    min = min == null ? s.firstStep() : Math.min(min, s.firstStep());
    max = max == null ? s.lastStep() : Math.max(max, s.lastStep());
    for (const m of runMarks(s, runs.get(id))) marks.push({ ...m, color: colors.get(id) });
  }
  scrubber.render({ min, max, step, marks });
}

// ---- launch form and the ablation button

form.addEventListener('input', ev => { if (ev.target.name) clearErrors(form, ev.target.name); });
form.addEventListener('submit', async ev => {
  ev.preventDefault();
  await submit($('#start'), read => api.createRun(read.name, read.config, presets.chosen()), run => {
    upsert(run);
    // A new run is what the person wants to watch. A preset's run is compared with the same
    // preset's runs only (its other variants), never with whatever else was shown.
    const preset = run.preset?.name;
    const keep = state.get().selected.filter(id => id !== run.id && (!preset || runs.get(id)?.preset?.name === preset));
    state.set({ selected: [...(arrival ? [] : keep), run.id], focus: run.id });
  });
});

$('#ablate').addEventListener('click', () => submit($('#ablate'), read => api.createGroup(ablationBody(read.name, read.config, presets.chosen())), g => {
  for (const run of g.runs) upsert(run);
  groups = [g, ...groups.filter(x => x.id !== g.id)];
  const ids = g.runs.map(r => r.id);
  state.set({ group: g.id, selected: ids, focus: ids[0] ?? null, heatmap: null, step: null });
  setGroup(g);
}));

// Read the form, send it, show the server's 422 next to the fields it names.
async function submit(button, send, done) {
  clearErrors(form);
  const read = readForm(form);
  if (read.errors) { showErrors(form, read.errors); return; }
  button.disabled = true;
  try {
    done(await send(read));
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) showErrors(form, detailErrors(err.detail));
    else showErrors(form, [{ field: null, msg: err instanceof ApiError ? `${err.status}: ${err.message}` : String(err) }]);
  } finally {
    button.disabled = false;
  }
}

$('#defaults').addEventListener('click', () => {
  form.reset();
  clearErrors(form);
  presets.pick(''); // own settings again
});

const presets = new PresetPicker($('#preset'), $('#preset-about'), (config, name) => fillForm(form, config, name));
presets.onLoad(list => {
  detail.setPresets(list);
  groupPanel.setPresets(list);
  render();
});

// ---- chart settings and downloads

$('#heatmap-run').addEventListener('change', ev => state.set({ heatmap: ev.target.value || null }));
$('#heatmap-stat').addEventListener('change', ev => state.set({ stat: ev.target.value }));
for (const box of [$('#weights-only'), $('#heatmap-weights')]) {
  box.addEventListener('change', ev => state.set({ layers: ev.target.checked ? 'weights' : 'all' }));
}
$('#heatmap-relative').addEventListener('change', ev => state.set({ relative: ev.target.checked }));
$('#layer-filter').addEventListener('input', ev => state.set({ filter: ev.target.value }));
$('#layer-agg').addEventListener('change', ev => state.set({ agg: ev.target.value }));
charts.onOpen = block => state.set({ open: toggleOpen(state.get().open, block) });
charts.onX = x => state.set({ x });
$('#xrange .all').addEventListener('click', () => state.set({ x: 'full' }));
$('#xrange .blowup').addEventListener('click', () => state.set({ x: null }));
$('#smooth').addEventListener('input', ev => {
  state.set({ smooth: Number(ev.target.value) });
  $('#smooth-value').textContent = Number(ev.target.value).toFixed(2);
});
for (const b of document.querySelectorAll('[data-scale]')) b.addEventListener('click', () => state.set({ scale: b.dataset.scale }));
document.addEventListener('click', ev => {
  const b = ev.target.closest('button.png');
  if (!b) return;
  const div = document.getElementById(b.dataset.chart);
  downloadPng(div, b.dataset.chart.replace(/^chart-/, '')).catch(err => flash(`PNG: ${err.message ?? err}`));
});

// Dark or light, as the system says (styles.css); a switch while the page is open recolors
// the figures already drawn (new layouts read the colors themselves).
globalThis.matchMedia?.('(prefers-color-scheme: dark)').addEventListener('change', () => {
  for (const job of charts.jobs) globalThis.Plotly.relayout(job.fig.div, themeRelayout());
});

// ---- start

let listed = false; // has the runs list loaded once

// (Re)load every run record. Metrics-patched numbers survive through upsert().
// The status sets come from the server (statuses.js) before the runs are first drawn.
const statusesLoaded = loadStatuses(api).catch(err => flash(`could not read the run statuses: ${err.message}`));
// So do the per-layer statistics (stats.js): the heatmap's menu, and what /metrics is asked for.
const statsLoaded = loadStats(api).then(() => {
  $('#heatmap-stat').replaceChildren(...heatmapStats().map(s => new Option(s.label, s.name)));
  if (!isHeatmapStat(state.get().stat)) state.set({ stat: 'grad_norm' }); // a link from another version
}).catch(err => flash(`could not read the statistics: ${err.message}`));
// The launch form's fields come from RunConfig's schema (form.js), built before the runs are
// first listed and before the presets that fill it.
const formBuilt = api.configSchema()
  .then(schema => applyBounds($('#detail form.live'), buildForm(form, schema)))
  .catch(err => flash(`could not read the run config's schema: ${err.message}`));

async function loadRuns() {
  try {
    await statusesLoaded;
    await statsLoaded;
    await formBuilt;
    const list = await api.listRuns();
    const ids = new Set(list.map(r => r.id));
    for (const id of [...runs.keys()]) if (!ids.has(id)) runs.delete(id);
    for (const run of list) upsert(run);
  } catch (err) {
    const auth = err instanceof ApiError && (err.status === 401 || err.status === 403);
    flash(`could not list runs: ${err.message}` + (auth ? ' (sign in at /login)' : ''), auth);
    return;
  }
  if (!listed) {
    listed = true;
    initialSelection();
  }
  applyState(); // colors depend on the run records, which are now here
  render();
}

function initialSelection() {
  const { selected, group: g } = state.get();
  if (!state.explicit.selected && g) {
    pickGroup(g); // a link to a group: its runs
  } else if (!state.explicit.selected) {
    // First visit without a selection: show what is running, else the newest run.
    const all = newestFirst();
    const active = all.filter(r => STATUSES.active.has(r.status)).slice(0, 4);
    state.set({ selected: (active.length ? active : all.slice(0, 1)).map(r => r.id).reverse() });
    arrival = state.get().selected.length > 0; // until the person picks (see select)
  } else {
    // Drop runs deleted since the link was made.
    state.set({ selected: selected.filter(id => runs.has(id)) });
  }
}

// For tests and the benchmark: the page's state and its drawing clock.
globalThis.gradwatch = { state, runs, series, charts, get group() { return group; }, get listed() { return listed; } };

stream.connect();
applyState(); // draw what the URL selected while the list loads
if (state.get().group) refreshGroup();
loadRuns();
loadGroups();
formBuilt.then(() => presets.load(api));
