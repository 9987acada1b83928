// The run statuses as the server defines them, once (server/lifecycle.py, served by
// GET /api/statuses): every status, those a run may still leave (`active`: Stop is offered),
// those whose worker may be training (`live`), and the final ones (`terminal`). The sets start
// empty and are filled from the server before the runs are first drawn (main.js awaits
// loadStatuses), so a status added on the server needs no edit here.

export const STATUSES = { all: new Set(), active: new Set(), live: new Set(), terminal: new Set() };

export async function loadStatuses(api) {
  const served = await api.statuses();
  for (const [key, set] of Object.entries(STATUSES)) {
    set.clear();
    for (const status of served[key] ?? []) set.add(status);
  }
  return STATUSES;
}
