// Chips above the charts: one per compared run, in its color, naming only the
// config fields in which the compared runs differ ("batchnorm on · l2 0.01"),
// so what a comparison is about reads at a glance.

import { short } from './markers.js';

// A config value a run has: present, and not null (a person's own loop sends
// only what it chose to; null is "not said").
const has = (config, k) => config != null && Object.hasOwn(config, k) && config[k] != null;

// Fields every config has and whose values are not all the same (in the first
// config's order). A field only some runs have cannot be compared: it is not
// a difference, it is a gap (`unshared` names those).
export function differingFields(configs) {
  if (configs.length < 2) return [];
  const first = configs[0] ?? {};
  return Object.keys(first).filter(k => configs.every(c => has(c, k))
    && configs.some(c => JSON.stringify(c[k]) !== JSON.stringify(first[k])));
}

// Fields some configs have and others do not (in first-seen order).
export function unsharedFields(configs) {
  const seen = new Set();
  for (const c of configs) for (const k of Object.keys(c ?? {})) if (has(c, k)) seen.add(k);
  return [...seen].filter(k => !configs.every(c => has(c, k)));
}

// A config value in a few characters: on/off, a short number, text; objects as JSON.
export const showValue = v => (typeof v === 'boolean' ? (v ? 'on' : 'off') : typeof v === 'number' ? short(v)
  : v != null && typeof v === 'object' ? JSON.stringify(v) : String(v));

// What the note after the chips says: which shared fields differ, and how many
// fields could not be compared (some runs do not have them).
export function chipsNote(configs) {
  if (configs.length < 2) return '';
  const fields = differingFields(configs);
  const gaps = unsharedFields(configs).length;
  const gap = gaps ? ` (${gaps} field${gaps > 1 ? 's' : ''} not in every run)` : '';
  if (fields.length) return `differ in: ${fields.join(', ')}${gap}`;
  return gaps ? `no shared setting differs${gap}` : 'same settings';
}

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

// Set a node's text only when it changes (a write is a DOM mutation, and a
// repaint, even when the text is the same).
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

const sameList = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

// runs: [{id, name, color, focused, config}]; onFocus(id); hint: a note to show
// instead of the comparison's. The chips are kept per run id and updated in
// place: only what changed is written.
export function renderChips(root, runs, onFocus, hint = '') {
  const configs = runs.map(r => r.config ?? {});
  const fields = differingFields(configs);
  const prefix = commonPrefix(runs.map(r => r.name));
  if (!root.chips) {
    root.chips = new Map(); // run id -> chip
    root.note = Object.assign(document.createElement('span'), { className: 'chips-note' });
    root.addEventListener('click', ev => {
      const chip = ev.target.closest('.chip');
      if (chip) root.onFocus?.(chip.dataset.runId);
    });
  }
  root.onFocus = onFocus;
  const seen = new Set();
  runs.forEach((run, i) => {
    seen.add(run.id);
    let chip = root.chips.get(run.id);
    if (!chip) {
      chip = document.createElement('button');
      chip.type = 'button';
      chip.dataset.runId = run.id;
      chip.append(Object.assign(document.createElement('span'), { className: 'swatch' }), document.createElement('b'));
      chip.diffs = [];
      root.chips.set(run.id, chip);
    }
    const cls = 'chip' + (run.focused ? ' focused' : '');
    if (chip.className !== cls) chip.className = cls;
    if (chip.style.getPropertyValue('--run') !== run.color) chip.style.setProperty('--run', run.color);
    setText(chip.querySelector('b'), run.name.slice(prefix.length));
    const title = `${run.name}: show its details`;
    if (chip.title !== title) chip.title = title;
    // A name that already says every difference ("batchnorm=off l2=0") needs no repeat.
    const said = fields.every(f => run.name.includes(`${f}=`));
    const diffs = said ? [] : fields.map(f => `${f} ${showValue(run.config[f])}`);
    if (!sameList(diffs, chip.diffs)) {
      chip.diffs = diffs;
      chip.querySelectorAll('.diff').forEach(d => d.remove());
      chip.append(...diffs.map((text, k) => {
        const part = Object.assign(document.createElement('span'), { className: 'diff', textContent: text });
        part.dataset.field = fields[k];
        return part;
      }));
    }
    if (root.children[i] !== chip) root.insertBefore(chip, root.children[i] ?? null);
  });
  for (const [id, chip] of root.chips) if (!seen.has(id)) { chip.remove(); root.chips.delete(id); }
  setText(root.note, hint || chipsNote(configs));
  const gaps = unsharedFields(configs);
  const noteTitle = gaps.length ? `not compared (some runs do not have them): ${gaps.join(', ')}` : '';
  if (root.note.title !== noteTitle) root.note.title = noteTitle;
  if (root.lastElementChild !== root.note) root.append(root.note);
}
