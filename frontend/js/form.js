// The launch form: build its RunConfig fields from the server's schema, read a
// RunConfig out of it, fill it from one, and put the server's 422 messages next
// to the fields they name. The fields, their defaults, bounds, options and
// descriptions are RunConfig's own (trainer/config.py, served as JSON schema by
// GET /api/config-schema): index.html only says where they go (data-fields).
// One input per field, id = name = the field name; the server validates.

const TOP_LEVEL = new Set(['name']); // request fields beside `config`

// Each field of RunConfig's JSON schema, in order, as what its input needs.
// DOM-free (tests/js).
export function fieldSpecs(schema) {
  return Object.entries(schema?.properties ?? {}).map(([name, p]) => ({
    name,
    kind: p.enum ? 'choice' : { boolean: 'bool', integer: 'int', number: 'number' }[p.type] ?? 'text',
    default: p.default,
    description: p.description ?? '',
    options: p.enum ?? null,
    min: p.minimum ?? null,
    max: p.maximum ?? null,
    step: p.type === 'integer' ? '1' : 'any',
  }));
}

// The attributes of a number input for a spec (also the live-change forms').
export function numberAttrs(spec) {
  const attrs = { type: 'number', step: spec.step };
  if (spec.min !== null) attrs.min = String(spec.min);
  if (spec.max !== null) attrs.max = String(spec.max);
  return attrs;
}

const node = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
};

function control(spec) {
  if (spec.kind === 'bool') {
    const box = node('input', { type: 'checkbox', id: spec.name, name: spec.name });
    box.defaultChecked = box.checked = spec.default === true;
    return box;
  }
  if (spec.kind === 'choice') {
    const select = node('select', { id: spec.name, name: spec.name });
    for (const option of spec.options) {
      const o = node('option', { value: option }, option);
      o.defaultSelected = o.selected = option === spec.default;
      select.append(o);
    }
    return select;
  }
  const input = node('input', { id: spec.name, name: spec.name, ...(spec.kind === 'text' ? {} : numberAttrs(spec)) });
  input.defaultValue = input.value = spec.default == null ? '' : String(spec.default);
  return input;
}

// One field's label: a switch in the toggles row, a check box or an input elsewhere.
function fieldNode(spec, inToggles) {
  const input = control(spec);
  const error = node('small', { class: 'field-error', 'data-for': spec.name });
  const hint = node('small', {}, spec.description);
  if (spec.kind === 'bool' && inToggles) {
    return node('label', { class: 'switch', title: spec.description }, input,
      node('span', { class: 'track', 'aria-hidden': 'true' }), node('span', {}, spec.name), error);
  }
  const cls = spec.kind === 'bool' ? 'field check' : 'field';
  return node('label', { class: cls, title: spec.description }, node('span', {}, `${spec.name} `, hint), input, error);
}

// Bounds of number inputs elsewhere that name a RunConfig field (the live-change form).
export function applyBounds(root, specs) {
  const byName = new Map(specs.map(s => [s.name, s]));
  for (const input of root?.querySelectorAll('input[type=number][name]') ?? []) {
    const spec = byName.get(input.name);
    if (spec) for (const [k, v] of Object.entries(numberAttrs(spec))) input.setAttribute(k, v);
  }
}

// Put one input per RunConfig field into the form: the fields an element's
// data-fields names ("batchnorm l2") go there, the rest where data-fields="*".
// Returns the specs.
export function buildForm(form, schema) {
  const specs = fieldSpecs(schema);
  const slots = [...form.querySelectorAll('[data-fields]')];
  const rest = slots.find(s => s.dataset.fields === '*');
  const placed = new Map();
  for (const slot of slots) for (const name of slot.dataset.fields.split(/\s+/)) placed.set(name, slot);
  for (const slot of slots) slot.replaceChildren();
  for (const spec of specs) {
    const slot = placed.get(spec.name) ?? rest;
    if (slot) slot.append(fieldNode(spec, slot !== rest));
  }
  return specs;
}

function inputs(form) {
  return [...form.elements].filter(el => el.name && el.type !== 'submit' && el.type !== 'button');
}

function valueOf(el) {
  if (el.type === 'checkbox') return el.checked;
  if (el.type === 'number') return el.value.trim() === '' ? undefined : Number(el.value);
  return el.value;
}

// {name, config} for POST /api/runs, or {errors} for fields left empty.
export function readForm(form) {
  const config = {};
  const errors = [];
  let name = null;
  for (const el of inputs(form)) {
    const value = valueOf(el);
    if (TOP_LEVEL.has(el.name)) { name = value.trim() || null; continue; }
    if (value === undefined || Number.isNaN(value)) errors.push({ field: el.name, msg: 'enter a number' });
    else config[el.name] = value;
  }
  return errors.length ? { errors } : { name, config };
}

// Copy a run's config into the form ("edit as new run").
export function fillForm(form, config, name = '') {
  for (const el of inputs(form)) {
    if (el.name === 'name') { el.value = name; continue; }
    if (!(el.name in config)) continue;
    if (el.type === 'checkbox') el.checked = Boolean(config[el.name]);
    else el.value = String(config[el.name]);
  }
  clearErrors(form);
}

export function clearErrors(form, field = null) {
  for (const el of form.querySelectorAll('.field-error')) {
    if (field === null || el.dataset.for === field) el.textContent = '';
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) {
    if (field === null || el.name === field) el.removeAttribute('aria-invalid');
  }
  if (field === null) form.querySelector('#form-error').textContent = '';
}

// Show errors as [{field, msg}] (or a FastAPI `detail`): each next to its
// field, opening the "more" section if the field is in it; what names no
// field of the form goes under the Start button.
export function showErrors(form, errors) {
  const loose = [];
  for (const { field, msg } of errors) {
    const slot = field && form.querySelector(`.field-error[data-for="${CSS.escape(field)}"]`);
    if (!slot) { loose.push(field ? `${field}: ${msg}` : msg); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent}; ${msg}` : msg;
    const input = form.elements.namedItem(field);
    input?.setAttribute('aria-invalid', 'true');
    const more = slot.closest('details');
    if (more) more.open = true;
  }
  form.querySelector('#form-error').textContent = loose.join('\n');
  form.querySelector('[aria-invalid]')?.focus();
}

// FastAPI's 422 `detail` -> [{field, msg}]. `loc` ends with the field name,
// e.g. ["body", "config", "depth"]; a `detail` string names no field.
export function detailErrors(detail) {
  if (!Array.isArray(detail)) return [{ field: null, msg: String(detail) }];
  return detail.map(d => {
    const loc = Array.isArray(d.loc) ? d.loc : [];
    const last = loc[loc.length - 1];
    return { field: typeof last === 'string' ? last : null, msg: d.msg ?? JSON.stringify(d) };
  });
}
