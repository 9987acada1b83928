// Presets that teach (GET /api/presets): the launch form's picker, and what a
// preset explains, shown in the form, in the details panel of a run started
// from one, and on the card of a group started from one. Choosing a preset, or
// one of its variants, fills the form with its config (the person can still
// change any field before starting); the run is then sent with the preset's
// and the variant's names, which it keeps.

// What a preset's `watch` names (the wire format's metrics), as the page's
// charts: a click scrolls to it.
const WATCH = {
  loss: { text: 'Loss', target: '#chart-loss' },
  accuracy: { text: 'Accuracy', target: '#chart-acc' },
  val_accuracy: { text: 'validation accuracy (◆)', target: '#chart-acc' },
  global_grad_norm: { text: 'Global gradient norm', target: '#chart-gnorm' },
  grad_norm: { text: 'Gradient norm per layer', target: '#chart-layers' },
  weight_norm: { text: 'Weight norm per layer', target: '#chart-weights' },
  update_ratio: { text: 'Update ratio per layer', target: '#chart-updates' },
  alert: { text: 'the alerts (⚠)', target: '#detail .alerts' },
  'stats.eff_lr': { text: 'Effective learning rate', target: '#chart-efflr' },
  'stats.dead_frac': { text: 'Dead ReLU units', target: '#chart-dead' },
};

const el = (tag, cls, text) => Object.assign(document.createElement(tag), { className: cls, textContent: text ?? '' });

// What a preset says, as nodes: its title, the first sentence of its
// explanation (the rest and the reference behind "more"), what to expect of
// the variant, and what to look at (buttons that scroll to those charts).
//   opts.variants: also the variants as buttons (the form's picker); opts.open: the rest unfolded.
export function presetAbout(preset, variant, { variants = false, open = false } = {}) {
  const [first, ...rest] = preset.explanation.split(/(?<=\.)\s+/);
  const parts = [el('b', 'title', preset.title), el('p', 'explain', first)];
  if (rest.length || preset.reference) {
    const more = el('details', 'more');
    more.open = open;
    more.append(el('summary', '', 'more'), el('p', '', rest.join(' ')));
    if (preset.reference) more.append(el('p', 'reference', preset.reference));
    parts.push(more);
  }
  if (variants && preset.variants?.length) {
    const row = el('div', 'variants');
    for (const v of preset.variants) {
      const b = el('button', 'variant' + (variant?.name === v.name ? ' chosen' : ''), v.title);
      b.type = 'button';
      b.dataset.variant = v.name;
      b.title = `expected: ${v.expect}`;
      row.append(b);
    }
    parts.push(row);
  }
  if (variant) parts.push(el('p', 'expect', `expected: ${variant.expect}`));
  if (preset.watch?.length) {
    const look = el('p', 'watch', 'look at: ');
    preset.watch.forEach((w, i) => {
      const known = WATCH[w];
      const b = el('button', 'look', known?.text ?? w);
      b.type = 'button';
      if (known) b.dataset.target = known.target;
      look.append(...(i ? [', '] : []), b);
    });
    parts.push(look);
  }
  return parts;
}

// A click on a "look at" button anywhere on the page: scroll to its chart.
document.addEventListener('click', ev => {
  const b = ev.target.closest('button.look[data-target]');
  const target = b && document.querySelector(b.dataset.target);
  if (!target) return;
  (target.closest('figure') ?? target).scrollIntoView({ behavior: 'smooth', block: 'center' });
});

// A run's or group's `preset` record ({name, variant, changed}) with the preset
// and variant it names, from the loaded list: {preset, variant, record} or null.
export function presetOf(record, presets) {
  const preset = record?.name ? presets.find(p => p.name === record.name) : null;
  if (!preset) return null;
  return { preset, variant: preset.variants?.find(v => v.name === record.variant) ?? null, record };
}

export class PresetPicker {
  // select: the <select>; about: where the explanation goes; fill(config, name): fill the form.
  constructor(select, about, fill) {
    this.select = select;
    this.about = about;
    this.fill = fill;
    this.presets = [];
    this.variant = null; // the variant chosen, if any
    this.listeners = [];
    select.addEventListener('change', () => this.pick(select.value));
    about.addEventListener('click', ev => {
      const b = ev.target.closest('button.variant');
      if (b) this.pickVariant(this.current(), b.dataset.variant);
    });
  }

  // Load the list; a server without presets (404) just hides the picker.
  async load(api) {
    try {
      this.presets = await api.listPresets();
    } catch {
      this.presets = [];
    }
    this.select.closest('.field').hidden = !this.presets.length;
    this.select.replaceChildren(new Option('— your own settings —', ''),
      ...this.presets.map(p => new Option(p.name, p.name)));
    for (const [i, p] of this.presets.entries()) this.select.options[i + 1].title = p.title;
    for (const fn of this.listeners) fn(this.presets);
  }

  // fn(presets): the list came (the details panel and group card wait for it).
  onLoad(fn) { this.listeners.push(fn); }

  current() {
    return this.presets.find(p => p.name === this.select.value) ?? null;
  }

  // What a run started now is sent with: {preset, variant} or {} (own settings).
  chosen() {
    const preset = this.current();
    return preset ? { preset: preset.name, ...(this.variant ? { variant: this.variant.name } : {}) } : {};
  }

  pick(name) {
    const preset = this.presets.find(p => p.name === name);
    this.variant = null;
    this.about.hidden = !preset;
    if (!preset) { this.select.value = ''; return; }
    this.fill(preset.config, preset.name);
    this.render(preset, null);
  }

  pickVariant(preset, name) {
    const variant = preset?.variants?.find(v => v.name === name);
    if (!variant) return;
    this.variant = variant;
    this.fill({ ...preset.config, ...variant.config }, `${preset.name} ${variant.name}`);
    this.render(preset, variant);
  }

  // Show a preset and variant as chosen without filling the form (its
  // settings were copied from a run of it); null: own settings.
  show(record) {
    const found = presetOf(record, this.presets);
    this.select.value = found?.preset.name ?? '';
    this.variant = found?.variant ?? null;
    this.about.hidden = !found;
    if (found) this.render(found.preset, found.variant);
  }

  render(preset, variant) {
    this.about.replaceChildren(...presetAbout(preset, variant, { variants: true }));
  }
}
