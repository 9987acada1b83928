// REST + websocket client. No DOM: the page wires the callbacks.
//
// The store is the source of truth and the live stream is a cache of it
// (docs/api.md): this module keeps, per watched run, the last `seq` it handed
// on; after a reconnect or a `resync` it fetches the gap from
// /metrics?since=<last seq>, so nothing is lost and nothing is drawn twice.

import { lineStats, statsReady } from './stats.js';

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === 'string' ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail; // FastAPI's `detail`: a string, or a list of {loc, msg} on 422
  }
}

// `token` is the ?token= of the page URL, if any: a Bearer header on REST and
// a ?token= on websocket URLs (browsers cannot set headers on a websocket).
// `unauthorized()` is called on a 401: the session ended (a sign-out, a server
// restart, 12 hours unused), and the page should send the person to /login.
export function createApi(token = null, base = globalThis.location, { unauthorized } = {}) {
  async function request(method, path, body) {
    const init = { method, headers: {} };
    if (token) init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 204) return null;
    const text = await res.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
    if (res.status === 401) unauthorized?.();
    if (!res.ok) throw new ApiError(res.status, data?.detail ?? (data || res.statusText));
    return data;
  }
  const run = id => `/api/runs/${encodeURIComponent(id)}`;
  return {
    listRuns: () => request('GET', '/api/runs'),
    statuses: () => request('GET', '/api/statuses'), // the status sets (statuses.js)
    configSchema: () => request('GET', '/api/config-schema'), // RunConfig's JSON schema: the launch form (form.js)
    // preset: {preset, variant} the form was filled from ({} for own settings); the run keeps them.
    createRun: (name, config, preset = {}) => request('POST', '/api/runs', { name, config, ...preset }),
    stopRun: id => request('POST', `${run(id)}/stop`),
    deleteRun: id => request('DELETE', run(id)),
    changeRun: (id, changes) => request('PATCH', run(id), changes), // l2 / lr / grad_clip, live
    // A new run from the newest checkpoint at or before `step`, with `changes` (docs/api.md, Forks).
    forkRun: (id, step, changes = {}) => request('POST', `${run(id)}/fork`, { step, changes }),
    checkpoints: id => request('GET', `${run(id)}/checkpoints`),
    metrics: async (id, since = 0, maxPoints = 2000) => {
      // Of the per-layer statistics, only what the charts draw (stats.js: the registry's), once known.
      await statsReady;
      const stats = lineStats();
      return request('GET', `${run(id)}/metrics?since=${since}&max_points=${maxPoints}`
        + (stats ? `&stats=${stats.join(',')}` : ''));
    },
    stats: () => request('GET', '/api/stats'), // the per-layer statistics (stats.js)
    // Layer x step min/max buckets of one statistic (one of the registry's `heatmap` ones).
    heatmap: (id, stat, maxPoints) => request('GET', `${run(id)}/heatmap?stat=${stat}&max_points=${maxPoints}`),
    // A plain link: the browser downloads it itself (the session cookie rides
    // along), so a big run never sits in the page's memory.
    exportUrl: (id, format) => `${run(id)}/export?format=${format}`,
    listPresets: () => request('GET', '/api/presets'),
    session: () => request('GET', '/api/session'), // 401 (and unauthorized()) once signed out
    createGroup: body => request('POST', '/api/groups', body),
    listGroups: () => request('GET', '/api/groups'),
    group: id => request('GET', `/api/groups/${encodeURIComponent(id)}`),
    streamUrl() {
      const url = new URL('/api/stream', base.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      if (token) url.searchParams.set('token', token);
      return url.href;
    },
  };
}

// Highest seq present in a /metrics answer (its metrics rows and its events).
// Not `last_seq`: that may have been read a moment after the rows, and events
// in between would then be skipped.
function topSeq(cols, since) {
  let top = since;
  for (const s of cols.seq ?? []) if (s > top) top = s;
  for (const e of cols.events ?? []) if (e.seq > top) top = e.seq;
  return top;
}

// The browser stream. Handlers:
//   run(msg)             run.update / run.deleted, for every run
//   history(id, cols)    a /metrics answer for a watched run (seq > what came before)
//   event(msg)           a live event of a watched run, in seq order, never twice
//   connection(status, info)   'connecting' | 'live' | 'reconnecting'
//   open(reconnected)    the socket is open (after a drop when reconnected)
//   resync()             the server dropped messages for us (run records may be stale)
//   gone(id)             /metrics said 404: the run no longer exists
// `maxPoints()`: how many steps of history to ask for (about the charts' width).
export class Stream {
  constructor(api, handlers, { maxPoints = () => 2000 } = {}) {
    this.api = api;
    this.on = handlers;
    this.maxPoints = maxPoints;
    this.runs = new Map(); // run id -> {lastSeq, pending, inFlight, again, retry}
    this.ws = null;
    this.attempt = 0;      // consecutive failed connects, for the backoff
    this.opened = false;   // has any connection opened yet
  }

  // The set of runs whose data the page draws. New ones are fetched from the
  // start; dropped ones are forgotten (a later watch fetches them afresh).
  setWatched(ids) {
    const want = new Set(ids);
    for (const id of this.runs.keys()) if (!want.has(id)) this.runs.delete(id);
    for (const id of want) {
      if (this.runs.has(id)) continue;
      this.runs.set(id, { lastSeq: 0, pending: null, inFlight: false, again: false, retry: 1000 });
      this.sync(id);
    }
  }

  // Fetch everything after the last seq handed on. Live events that arrive
  // meanwhile wait in `pending`, so history always lands before them.
  async sync(id) {
    const entry = this.runs.get(id);
    if (!entry) return;
    if (entry.inFlight) { entry.again = true; return; } // one fetch at a time; redo after it
    entry.inFlight = true;
    entry.pending = [];
    let failed = false;
    try {
      const cols = await this.api.metrics(id, entry.lastSeq, this.maxPoints());
      if (this.runs.get(id) !== entry) return; // unwatched while fetching
      const since = entry.lastSeq;
      entry.lastSeq = topSeq(cols, since);
      entry.retry = 1000;
      this.on.history(id, cols, since);
    } catch (err) {
      if (this.runs.get(id) !== entry) return;
      if (err instanceof ApiError && err.status === 404) {
        this.runs.delete(id);
        this.on.gone?.(id);
        return;
      }
      console.warn(`gradwatch: fetching history of ${id} failed:`, err);
      failed = true;
    } finally {
      if (this.runs.get(id) === entry) {
        const pending = entry.pending;
        entry.pending = null;
        entry.inFlight = false;
        for (const msg of pending) this.deliver(entry, msg);
        if (failed) {
          // Retry with backoff; a reconnect also re-syncs every watched run.
          setTimeout(() => this.sync(id), entry.retry);
          entry.retry = Math.min(entry.retry * 2, 30000);
        } else if (entry.again) {
          entry.again = false;
          this.sync(id);
        }
      }
    }
  }

  syncAll() {
    for (const id of this.runs.keys()) this.sync(id);
  }

  deliver(entry, msg) {
    if (msg.seq <= entry.lastSeq) return; // already drawn, from history or live
    entry.lastSeq = msg.seq;
    this.on.event(msg);
  }

  connect() {
    this.on.connection?.(this.opened ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(this.api.streamUrl());
    this.ws = ws;
    ws.onopen = () => {
      const reconnected = this.opened;
      this.opened = true;
      this.attempt = 0;
      this.on.connection?.('live');
      this.on.open?.(reconnected);
      // Events stored while we were away (or before this socket subscribed)
      // come from the store: fetch the gap for every watched run.
      this.syncAll();
    };
    // A frame is a JSON array of messages (everything since the previous frame,
    // at most ~25 frames a second); an object is one message (?frames=single).
    ws.onmessage = ev => {
      const data = JSON.parse(ev.data);
      if (Array.isArray(data)) for (const msg of data) this.receive(msg);
      else this.receive(data);
    };
    ws.onclose = ev => {
      if (this.ws !== ws) return;
      this.ws = null;
      // Exponential backoff with jitter, 0.5 s doubling to 10 s, so a restarted
      // server is not hit by every open tab at the same instant.
      const delay = Math.min(10000, 500 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
      this.attempt++;
      this.on.connection?.('reconnecting', { delay, code: ev.code, reason: ev.reason });
      // A refused upgrade looks like a server that is away; a session that ended
      // answers this with a 401 (unauthorized() then leaves for /login).
      this.api.session?.().catch(() => {});
      setTimeout(() => this.connect(), delay);
    };
  }

  receive(msg) {
    switch (msg.type) {
      case 'run.update':
      case 'run.deleted':
        this.on.run(msg);
        return;
      case 'resync':
        // We fell behind and the server dropped our queue (run.update messages
        // included): refetch every watched run's gap, and tell the page.
        this.on.resync?.();
        this.syncAll();
        return;
    }
    const entry = this.runs.get(msg.run_id);
    if (!entry || typeof msg.seq !== 'number') return; // not a run this page draws
    if (entry.inFlight) entry.pending.push(msg);
    else this.deliver(entry, msg);
  }
}
