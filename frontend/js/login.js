// The sign-in page. The token is posted to /api/login, never put in an
// address (what a browser opened stays in its history). A sign-in link,
// /login#code=<one-time code>, signs in at once: the fragment is never sent to
// the server, and it leaves the address bar before anything else happens (the
// history keeps the code, which signs nobody in once used).
//
// Where to go after: `?next=` (the page the person asked for, kept by the
// server's redirect), plus any other fields of the fragment, which are view
// state (`#code=…&runs=a,b` opens the dashboard on runs a and b).

const $ = sel => document.querySelector(sel);

// A path on this server only: not `//evil.example`, not `https://…`.
export function safeNext(next) {
  if (typeof next !== 'string' || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/';
  return next;
}

// The page to open once signed in: `next`, with the fragment's other fields added to its query.
export function target(search, hash) {
  const fragment = new URLSearchParams(hash.replace(/^#/, ''));
  fragment.delete('code');
  fragment.delete('token');
  const next = safeNext(new URLSearchParams(search).get('next'));
  const extra = fragment.toString();
  if (!extra) return next;
  return next + (next.includes('?') ? '&' : '?') + extra;
}

async function signIn(body) {
  const res = await fetch('/api/login', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (res.ok) return null;
  try { return (await res.json()).detail ?? `HTTP ${res.status}`; } catch { return `HTTP ${res.status}`; }
}

function showError(text) {
  const el = $('#login-error');
  el.textContent = text;
  el.hidden = !text;
}

function main() {
  const code = new URLSearchParams(location.hash.replace(/^#/, '')).get('code');
  const to = target(location.search, location.hash);
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  const form = $('#login');
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const token = $('#token').value.trim();
    if (!token) return showError('paste the token');
    form.querySelector('button').disabled = true;
    const error = await signIn({ token }).catch(err => String(err));
    form.querySelector('button').disabled = false;
    if (error) return showError(error);
    location.replace(to);
  });
  if (code) {
    $('#login-status').textContent = 'Signing in…';
    signIn({ code }).catch(err => String(err)).then(error => {
      if (!error) return location.replace(to);
      $('#login-status').textContent = 'That sign-in link was used already or is too old. Paste the token.';
    });
  }
  $('#token').focus();
}

if (globalThis.document) main();
