// DOM helpers: element building (text only — never innerHTML with data), forms that show the
// API's error message and field details, navigation inside the application.

/** h('button', {class: 'x', onclick}, 'text', child…) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function mount(root, ...nodes) {
  root.replaceChildren(...nodes.flat());
}

let router = null;
export function setRouter(fn) { router = fn; }

/** Goes to a path of the application without reloading the page. */
export function go(path, replace = false) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  if (router) router();
}

/** A link that navigates inside the application. */
export function link(href, text, attrs = {}) {
  return h('a', { href, ...attrs, onclick: (e) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    go(href);
  } }, text);
}

/** The box that shows an error: the API's `error.message`, and each field detail. */
export function errorBox(err) {
  const message = (err && err.message) || String(err);
  // Field details, unless the message already says the one there is.
  const details = (Array.isArray(err && err.details) ? err.details : [])
    .filter((d, _, all) => !(all.length === 1 && d.message && message.includes(d.message)));
  return h('div', { class: 'error', role: 'alert' },
    message,
    details.length ? h('ul', {}, details.map((d) => h('li', {}, d.field ? `${d.field}: ${d.message || d.reason || ''}` : JSON.stringify(d)))) : null);
}

export function notice(text) { return h('div', { class: 'notice', role: 'status' }, text); }

let seq = 0;
/** A labelled input; `opts` are the input's attributes. */
export function field(label, name, opts = {}) {
  const id = `f${++seq}-${name}`;
  const input = opts.tag === 'select'
    ? h('select', { id, name, ...opts.attrs }, (opts.options || []).map((o) => h('option', { value: o.value ?? o, selected: (o.value ?? o) === opts.value }, o.label ?? o)))
    : opts.tag === 'textarea'
      ? h('textarea', { id, name, rows: 3, ...opts.attrs }, opts.value || '')
      : h('input', { id, name, type: opts.type || 'text', value: opts.value, ...opts.attrs });
  if (opts.hint) input.setAttribute('aria-describedby', `${id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    opts.hint ? h('span', { id: `${id}-hint`, class: 'muted' }, opts.hint) : null);
}

/**
 * Keeps keyboard focus somewhere useful when an action re-rendered the page under it (the
 * focused button or form is gone): the page's message if there is one, else its heading.
 */
export function refocus(was) {
  if (was && document.contains(was)) return;
  // The action put focus somewhere itself (e.g. on a shown secret's buttons): leave it there.
  const active = document.activeElement;
  if (active && active !== document.body && document.contains(active)) return;
  const main = document.getElementById('main');
  if (!main) return;
  const target = main.querySelector('[role=alert], [role=status]:not(:empty), h1');
  if (!target) return;
  if (!target.hasAttribute('tabindex')) target.setAttribute('tabindex', '-1');
  target.focus();
}

/**
 * A form whose submit runs `action(values, form)`: the button is disabled while it runs (with
 * `busyText`), a thrown error shows above the button. `children` are the fields.
 */
export function form(children, submitText, action, { busyText = 'Working…', secondary = null } = {}) {
  const status = h('div', {});
  const button = h('button', { type: 'submit' }, submitText);
  const f = h('form', { novalidate: false }, children, status, h('div', { class: 'row buttons' }, button, secondary));
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.replaceChildren();
    const values = Object.fromEntries(new FormData(f).entries());
    button.disabled = true;
    const label = button.textContent;
    button.textContent = busyText;
    try {
      const shown = await action(values, f);
      if (shown instanceof Node) status.replaceChildren(shown);
    } catch (err) {
      status.replaceChildren(errorBox(err));
      const first = f.querySelector('input, select, textarea');
      if (err && err.status === 400 && first) first.focus();
    } finally {
      button.disabled = false;
      button.textContent = label;
      refocus(f);
    }
  });
  return f;
}

/** A button whose click runs `action`; errors go to `errorTarget` (or an alert). */
export function actionButton(text, action, { cls = 'secondary small', errorTarget = null, label = null } = {}) {
  const b = h('button', { type: 'button', class: cls, 'aria-label': label || undefined }, text);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try {
      await action();
    } catch (err) {
      if (errorTarget) errorTarget.replaceChildren(errorBox(err));
      else alert(err.message || String(err));
    } finally {
      b.disabled = false;
      refocus(b);
    }
  });
  return b;
}

export function badge(text) { return h('span', { class: `badge ${text}` }, text.replace('_', ' ')); }

export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** A table (cards on a phone): columns [{label, cell: (row) => node|text}]. */
export function table(columns, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('table', { class: 'cards' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => {
      const cell = c.cell(r);
      return h('td', { 'data-label': c.label || undefined }, c.cls === 'actions' ? h('div', { class: 'actions' }, cell) : cell);
    })))));
}

/** Copies text, with a fallback that selects it for Ctrl+C. */
export async function copy(text, selectable) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (selectable) {
      const range = document.createRange();
      range.selectNodeContents(selectable);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
    return false;
  }
}

export function params() { return new URLSearchParams(location.search); }

/**
 * A secret shown once (an API key, a webhook signing secret): its value, a copy button and
 * "I have saved it" (which runs `onDone`); `extra` goes below.
 */
export function secretPanel({ title, secret, region, note, copyText, onDone, extra = null }) {
  const code = h('code', { id: 'new-secret' }, secret);
  const copied = h('span', { class: 'muted', role: 'status' });
  return h('div', { class: 'secret', role: 'region', 'aria-label': region },
    h('strong', {}, title),
    h('span', {}, note),
    code,
    h('div', { class: 'row buttons' },
      h('button', { type: 'button', onclick: async () => {
        copied.textContent = (await copy(secret, code)) ? 'Copied.' : 'Selected: press Ctrl+C to copy.';
      } }, copyText),
      h('button', { type: 'button', class: 'secondary', onclick: () => { onDone(); refocus(); } }, 'I have saved it'),
      copied),
    extra);
}
