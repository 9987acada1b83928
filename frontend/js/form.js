// The launch form: read a RunConfig out of it, fill it from one, and put the
// server's 422 messages next to the fields they name. The fields, their
// defaults and allowed values are declared in index.html (one input per
// RunConfig field, id = name = the field name); the server validates.

const TOP_LEVEL = new Set(['name']); // request fields beside `config`

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
