// The step scrubber of the layer profiles: follows the latest step while the
// runs train, or holds the step the person dragged it to. Ticks above the
// track mark the selected runs' interventions, alerts and divergence.

export class Scrubber {
  // onStep(step): a step, or null for "follow the latest".
  constructor(root, onStep) {
    this.root = root;
    this.range = root.querySelector('input[type=range]');
    this.label = root.querySelector('.step-label');
    this.follow = root.querySelector('button.follow');
    this.ticks = root.querySelector('.ticks');
    this.range.addEventListener('input', () => {
      const v = Number(this.range.value);
      onStep(v >= Number(this.range.max) ? null : v); // dragged to the end: follow again
    });
    this.follow.addEventListener('click', () => onStep(null));
  }

  // min/max: the steps the selected runs span (null when none); step: the state's.
  // marks: [{step, kind, label, color}].
  render({ min, max, step, marks }) {
    const none = min == null;
    this.range.disabled = none;
    this.range.min = none ? 0 : min;
    this.range.max = none ? 0 : Math.max(max, min + 1);
    const shown = step == null ? max : Math.min(step, max);
    if (!none && document.activeElement !== this.range) this.range.value = shown;
    this.follow.hidden = step == null;
    this.root.classList.toggle('following', step == null);
    this.label.textContent = none ? '—' : step == null ? `${max} (latest)` : `${step} of ${max}`;
    const key = none ? '' : JSON.stringify([min, max, marks.map(m => [m.step, m.color, m.label])]);
    if (this.ticks.dataset.key === key) return;
    this.ticks.dataset.key = key;
    const span = Math.max(1, max - min);
    this.ticks.replaceChildren(...(none ? [] : marks).filter(m => m.step >= min && m.step <= max).map(m => {
      const tick = document.createElement('span');
      tick.className = `tick ${m.kind}`;
      tick.style.left = `${(100 * (m.step - min)) / span}%`;
      tick.style.setProperty('--run', m.color);
      tick.title = m.hover ?? m.label;
      return tick;
    }));
  }
}
