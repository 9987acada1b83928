// Wiring: the URL state, the REST/websocket client, the run records and
// their buffers, the runs table, the launch form and the charts.

import { createState, assignColors, hashColor } from './state.js';
import { createApi, ApiError, Stream } from './api.js';
import { RunSeries } from './series.js';
import { Charts } from './charts.js';
import { RunList, problem } from './runlist.js';
import { readForm, fillForm, clearErrors, showErrors, detailErrors } from './form.js';

const $ = sel => document.querySelector(sel);

const api = createApi(new URLSearchParams(location.search).get('token'));
const state = createState();
const runs = new Map();   // run id -> run record (docs/api.md), as the server last said
const series = new Map(); // run id -> RunSeries, for the selected runs only
const charts = new Charts();
let colors = new Map();

const runList = new RunList($('#runs tbody'), {
  select: (id, on) => select(id, on),
  focus: id => {
    if (!state.get().selected.includes(id)) select(id, true);
    state.set({ focus: id, heatmap: null }); // the heatmap follows the focus again
  },
  stop: id => act(() => api.stopRun(id).then(upsert)),
  remove: id => act(() => api.deleteRun(id).then(() => forget(id))),
});

const stream = new Stream(api, {
  run(msg) {
    if (msg.type === 'run.deleted') forget(msg.run_id);
    else upsert(msg.run);
  },
  history(id, cols, since) {
    series.get(id)?.addHistory(cols, since);
    charts.touch();
    render();
  },
  event(msg) {
    series.get(msg.run_id)?.addEvent(msg);
    // Metrics are more frequent than run.update: keep the row's numbers live.
    const run = runs.get(msg.run_id);
    if (run && msg.type === 'metrics') {
      run.summary = { ...run.summary, step: msg.step, loss: msg.loss, accuracy: msg.accuracy };
    }
    charts.touch();
    render();
  },
  gone: id => forget(id),
  open(reconnected) {
    // Status changes made while the socket was down are only in the store.
    if (reconnected) loadRuns();
  },
  resync: () => loadRuns(),
  connection(status, info) {
    const conn = $('#conn');
    conn.className = `conn ${status}`;
    conn.textContent = status === 'reconnecting' && info
      ? `reconnecting in ${(info.delay / 1000).toFixed(1)} s` + (info.reason ? ` (${info.reason})` : '')
      : status;
  },
});

// ---- runs and selection

function newestFirst() {
  return [...runs.values()].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
}

function upsert(run) {
  if (!run?.id) return;
  // A run.update's summary can be older than the metrics events already
  // shown for a watched run; keep the newer step's numbers.
  const old = runs.get(run.id)?.summary;
  if (old && (old.step ?? -1) > (run.summary?.step ?? -1)) {
    run.summary = { ...run.summary, step: old.step, loss: old.loss, accuracy: old.accuracy };
  }
  runs.set(run.id, run);
  render();
}

function forget(id) {
  runs.delete(id);
  const { selected, focus, heatmap } = state.get();
  state.set({
    selected: selected.filter(s => s !== id),
    focus: focus === id ? null : focus,
    heatmap: heatmap === id ? null : heatmap,
  });
  render();
}

function select(id, on) {
  const selected = state.get().selected.filter(s => s !== id);
  if (on) selected.push(id); // last = most recently selected
  state.set({ selected });
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
  const { selected, focus, heatmap } = state.get();
  if (selected.includes(heatmap)) return heatmap;
  if (selected.includes(focus)) return focus;
  return selected[selected.length - 1] ?? null;
}

// State changed: keep buffers, the stream's filter and the charts in step.
function applyState() {
  const { selected, focus } = state.get();
  for (const id of series.keys()) if (!selected.includes(id)) series.delete(id);
  for (const id of selected) if (!series.has(id)) series.set(id, new RunSeries(id));
  stream.setWatched(selected);
  colors = assignColors([...runs.values()], selected);
  charts.setRuns(selected.map(id => ({
    id,
    name: runs.get(id)?.name || id,
    color: colors.get(id) ?? hashColor(id),
    focused: id === focus,
    series: series.get(id),
  })));
  charts.setHeatmapRun(heatmapRun());
}

state.subscribe(() => { applyState(); render(); });

// ---- rendering (coalesced: run.update and metrics can come every step)

let renderTimer = null;
let lastNames = '';
function render() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    const { selected, focus } = state.get();
    colors = assignColors([...runs.values()], selected);
    // A run record arriving (or renamed) for a selected run changes legends and colors.
    const names = selected.map(id => `${id}=${runs.get(id)?.name ?? ''}${colors.get(id)}`).join(',');
    if (names !== lastNames) { lastNames = names; applyState(); }
    runList.render(newestFirst(), { selected: new Set(selected), focus, colors });
    $('#runs-empty').hidden = runs.size > 0;
    renderHeatmapSelect();
    renderDetail(runs.get(focus));
  }, 100);
}

function renderHeatmapSelect() {
  const pick = $('#heatmap-run');
  const { selected } = state.get();
  const want = selected.map(id => `${id}:${runs.get(id)?.name ?? id}`).join(',');
  if (pick.dataset.options !== want) {
    pick.dataset.options = want;
    pick.replaceChildren(...selected.map(id => new Option(runs.get(id)?.name || id, id)));
  }
  pick.value = heatmapRun() ?? '';
  pick.disabled = !selected.length;
}

function renderDetail(run) {
  const box = $('#detail');
  box.hidden = !run;
  if (!run) return;
  $('#detail-name').textContent = run.name || run.id;
  $('#detail-name').style.color = colors.get(run.id) ?? '';
  const badge = $('#detail-status');
  badge.textContent = run.status;
  badge.className = `badge status-${run.status}`;
  $('#detail-problem').textContent = problem(run);
  const config = Object.entries(run.config ?? {}).map(([k, v]) => `${k}=${v}`).join('  ');
  if ($('#detail-config').textContent !== config) $('#detail-config').textContent = config;
  const events = series.get(run.id)?.events ?? [];
  const lines = events.slice(-20).reverse().map(describe);
  const list = $('#detail-events');
  if (list.dataset.key !== lines.join('\n')) {
    list.dataset.key = lines.join('\n');
    list.replaceChildren(...lines.map(text => Object.assign(document.createElement('li'), { textContent: text })));
  }
}

// One line for an event in the details panel (trainer/events.py defines them).
function describe(e) {
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

// ---- launch form

const form = $('#launch');
form.addEventListener('input', ev => { if (ev.target.name) clearErrors(form, ev.target.name); });
form.addEventListener('submit', async ev => {
  ev.preventDefault();
  clearErrors(form);
  const read = readForm(form);
  if (read.errors) { showErrors(form, read.errors); return; }
  const start = $('#start');
  start.disabled = true;
  try {
    const run = await api.createRun(read.name, read.config);
    upsert(run);
    select(run.id, true); // a new run is what the person wants to watch
    state.set({ focus: run.id });
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) showErrors(form, detailErrors(err.detail));
    else showErrors(form, [{ field: null, msg: err instanceof ApiError ? `${err.status}: ${err.message}` : String(err) }]);
  } finally {
    start.disabled = false;
  }
});
$('#defaults').addEventListener('click', () => { form.reset(); clearErrors(form); });
$('#copy-config').addEventListener('click', () => {
  const run = runs.get(state.get().focus);
  if (run) fillForm(form, run.config ?? {}, run.name ? `${run.name} (copy)` : '');
});
$('#heatmap-run').addEventListener('change', ev => state.set({ heatmap: ev.target.value || null }));

// ---- start

async function loadRuns() {
  try {
    const list = await api.listRuns();
    runs.clear();
    for (const run of list) runs.set(run.id, run);
    return true;
  } catch (err) {
    const auth = err instanceof ApiError && (err.status === 401 || err.status === 403);
    flash(`could not list runs: ${err.message}` + (auth ? ' (open the link with the right ?token=)' : ''), auth);
    return false;
  } finally {
    render();
  }
}

async function start() {
  stream.connect();
  applyState(); // draw what the URL selected while the list loads
  if (!(await loadRuns())) return;
  const { selected } = state.get();
  if (!state.explicit.selected) {
    // First visit without a selection: show what is running, else the newest run.
    const all = newestFirst();
    const active = all.filter(r => r.status === 'running' || r.status === 'queued').slice(0, 4);
    state.set({ selected: (active.length ? active : all.slice(0, 1)).map(r => r.id).reverse() });
  } else {
    // Drop runs deleted since the link was made.
    state.set({ selected: selected.filter(id => runs.has(id)) });
  }
  applyState(); // colors depend on the run records, which are now here
  render();
}

start();
