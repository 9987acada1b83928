/* global Plotly */
// Every text handed to Plotly is escaped, whoever wrote it.
//
// Plotly draws strings (trace names, category ticks, hover text, annotations,
// customdata used in hover templates) as its own small HTML: `<a href>` makes
// a link, `<span style>` a style. Run names come from people, layer names,
// alert messages and intervention values from workers, some of them someone's
// own training script (docs/security.md). So before any figure reaches Plotly,
// every `<` that does not open one of Plotly's plain formatting tags (br, b,
// i, em, sup, sub, and hover templates' extra) becomes `&lt;`: Plotly shows it
// as the character it is. Those tags carry no attributes, so no link and no
// style can come from data; the page's own labels keep their <br> and <b>.
//
// Installed once, on the global Plotly, by importing this module (main.js does
// it first): every chart module calls Plotly.newPlot/react/extendTraces/…,
// and none of them has to remember.

const PLAIN_TAG = /<(?!\/?(?:br|b|i|em|sup|sub|extra)\s*\/?>)/gi;

export function safeText(s) {
  return s.includes('<') ? s.replace(PLAIN_TAG, '&lt;') : s;
}

// A copy of `value` with every string made safe; the same object where
// nothing changed (the usual case: no '<' anywhere), so callers' references
// and Plotly's own bookkeeping keep working. Numbers and typed arrays pass as
// they are; only plain objects and arrays are walked.
export function safeFigure(value, depth = 0) {
  if (typeof value === 'string') return safeText(value);
  if (depth > 12 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) {
    let out = value;
    for (let i = 0; i < value.length; i++) {
      const v = value[i];
      if (typeof v === 'number') continue;
      const c = safeFigure(v, depth + 1);
      if (c !== v) {
        if (out === value) out = value.slice();
        out[i] = c;
      }
    }
    return out;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return value; // a DOM node, a typed array, …
  let out = value;
  for (const key of Object.keys(value)) {
    const v = value[key];
    const c = safeFigure(v, depth + 1);
    if (c !== v) {
      if (out === value) out = { ...value };
      out[key] = c;
    }
  }
  return out;
}

// Wrap the Plotly calls that take figure content: every argument after the
// div (the first) goes through safeFigure.
const CALLS = ['newPlot', 'react', 'restyle', 'relayout', 'update', 'extendTraces', 'prependTraces', 'addTraces'];

export function install(plotly) {
  if (!plotly || plotly.__gradwatchSafe) return;
  for (const name of CALLS) {
    const original = plotly[name];
    if (typeof original !== 'function') continue;
    plotly[name] = function safe(gd, ...args) {
      return original.call(this, gd, ...args.map(a => safeFigure(a)));
    };
  }
  plotly.__gradwatchSafe = true;
}

install(globalThis.Plotly);
