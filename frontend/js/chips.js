// Chips above the charts: one per compared run, in its color, naming only the
// config fields in which the compared runs differ ("batchnorm on · l2 0.01"),
// so what a comparison is about reads at a glance.

import { short } from './markers.js';

// Fields whose values are not the same in every config (in the first config's order).
export function differingFields(configs) {
  if (configs.length < 2) return [];
  const fields = [];
  const seen = new Set();
  for (const c of configs) for (const k of Object.keys(c ?? {})) if (!seen.has(k)) { seen.add(k); fields.push(k); }
  return fields.filter(k => {
    const first = JSON.stringify(configs[0]?.[k]);
    return configs.some(c => JSON.stringify(c?.[k]) !== first);
  });
}

export const showValue = v => (typeof v === 'boolean' ? (v ? 'on' : 'off') : typeof v === 'number' ? short(v) : String(v));

// The start all names share up to a word break ("BN × L2: " of a group's
// runs), which the chips leave out.
export function commonPrefix(names) {
  if (names.length < 2) return '';
  let p = names[0];
  for (const n of names) while (!n.startsWith(p)) p = p.slice(0, -1);
  const colon = p.lastIndexOf(': ');
  const cut = colon >= 0 ? colon + 2 : p.lastIndexOf(' ') + 1; // 0: no break, no prefix
  return names.every(n => n.length > cut) ? p.slice(0, cut) : '';
}

// runs: [{id, name, color, focused, config}]; onFocus(id).
export function renderChips(root, runs, onFocus) {
  const fields = differingFields(runs.map(r => r.config));
  const prefix = commonPrefix(runs.map(r => r.name));
  const key = JSON.stringify([fields, prefix, runs.map(r => [r.id, r.name, r.color, r.focused, fields.map(f => r.config?.[f])])]);
  if (root.dataset.key === key) return;
  root.dataset.key = key;
  const chips = runs.map(run => {
    const chip = document.createElement('button');
    chip.type = 'button';
    chip.className = 'chip' + (run.focused ? ' focused' : '');
    chip.dataset.runId = run.id;
    chip.style.setProperty('--run', run.color);
    const name = document.createElement('b');
    name.textContent = run.name.slice(prefix.length);
    chip.title = `${run.name}: show its details`;
    chip.append(Object.assign(document.createElement('span'), { className: 'swatch' }), name);
    // A name that already says every difference ("batchnorm=off l2=0") needs no repeat.
    const said = fields.every(f => run.name.includes(`${f}=`));
    for (const f of said ? [] : fields) {
      const part = document.createElement('span');
      part.className = 'diff';
      part.dataset.field = f;
      part.textContent = `${f} ${showValue(run.config?.[f])}`;
      chip.append(part);
    }
    chip.addEventListener('click', () => onFocus(run.id));
    return chip;
  });
  const note = document.createElement('span');
  note.className = 'chips-note';
  note.textContent = runs.length < 2 ? '' : fields.length ? 'differ in: ' + fields.join(', ') : 'same settings';
  root.replaceChildren(...chips, note);
}
