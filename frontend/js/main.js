// Wiring: the URL state, the REST/websocket client, the run records and
// their buffers, the runs table, the launch form and the charts.

import { createState, assignColors, hashColor } from './state.js';
import { createApi, ApiError, Stream } from './api.js';
import { RunSeries } from './series.js';
import { Charts } from './charts.js';
import { RunList } from './runlist.js';
import { DetailPanel } from './detail.js';
import { readForm, fillForm, clearErrors, showErrors, detailErrors } from './form.js';

const $ = sel => document.querySelector(sel);

const api = createApi(new URLSearchParams(location.search).get('token'));
const state = createState();
const runs = new Map();   // run id -> run record (docs/api.md), as the server last said
const series = new Map(); // run id -> RunSeries, for the selected runs only
const charts = new Charts();
const form = $('#launch');
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

const detail = new DetailPanel($('#detail'), {
  api,
  onCopy: run => fillForm(form, run.config ?? {}, run.name ? `${run.name} (copy)` : ''),
});

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
    if (last >= 0) latest(id, s.step[last], s.loss[last], s.accuracy[last]);
    charts.touch();
    render();
  },
  event(msg) {
    series.get(msg.run_id)?.addEvent(msg);
    if (msg.type === 'metrics') latest(msg.run_id, msg.step, msg.loss, msg.accuracy);
    charts.touch();
    render();
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
});

// ---- runs and selection

function newestFirst() {
  return [...runs.values()].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
}

// Metrics arrive every step, run.update less often: keep the row's numbers
// at the newest step the page has seen.
function latest(id, step, loss, accuracy) {
  const run = runs.get(id);
  if (run && step > (run.summary?.step ?? -1)) run.summary = { ...run.summary, step, loss, accuracy };
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
    detail.render(runs.get(focus), colors.get(focus), series.get(focus)?.events);
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

// ---- launch form

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
$('#heatmap-run').addEventListener('change', ev => state.set({ heatmap: ev.target.value || null }));

// ---- start

let listed = false; // has the runs list loaded once

// (Re)load every run record. Metrics-patched numbers survive through upsert().
async function loadRuns() {
  try {
    const list = await api.listRuns();
    const ids = new Set(list.map(r => r.id));
    for (const id of [...runs.keys()]) if (!ids.has(id)) runs.delete(id);
    for (const run of list) upsert(run);
  } catch (err) {
    const auth = err instanceof ApiError && (err.status === 401 || err.status === 403);
    flash(`could not list runs: ${err.message}` + (auth ? ' (open the link with the right ?token=)' : ''), auth);
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
}

stream.connect();
applyState(); // draw what the URL selected while the list loads
loadRuns();
