// The preset picker of the launch form (GET /api/presets): choosing a preset,
// or one of its variants, fills the form with its config (the person can
// still change any field before starting) and shows what it teaches.

export class PresetPicker {
  // select: the <select>; about: where the explanation goes; fill(config, name): fill the form.
  constructor(select, about, fill) {
    this.select = select;
    this.about = about;
    this.fill = fill;
    this.presets = [];
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
  }

  current() {
    return this.presets.find(p => p.name === this.select.value) ?? null;
  }

  pick(name) {
    const preset = this.presets.find(p => p.name === name);
    this.about.hidden = !preset;
    if (!preset) return;
    this.fill(preset.config, preset.name);
    this.render(preset, null);
  }

  pickVariant(preset, name) {
    const variant = preset?.variants?.find(v => v.name === name);
    if (!variant) return;
    this.fill({ ...preset.config, ...variant.config }, `${preset.name} ${variant.name}`);
    this.render(preset, variant);
  }

  // Title, the first sentence (the rest behind "more"), the variants as buttons.
  render(preset, variant) {
    const [first, ...rest] = preset.explanation.split(/(?<=\.)\s+/);
    const el = (tag, cls, text) => Object.assign(document.createElement(tag), { className: cls, textContent: text ?? '' });
    const parts = [el('b', 'title', preset.title), el('p', 'explain', first)];
    if (rest.length || preset.reference) {
      const more = el('details', 'more');
      more.append(el('summary', '', 'more'), el('p', '', rest.join(' ')));
      if (preset.reference) more.append(el('p', 'reference', preset.reference));
      parts.push(more);
    }
    if (preset.variants?.length) {
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
    this.about.replaceChildren(...parts);
  }
}
