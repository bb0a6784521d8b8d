// The platform admin's pages (`/admin/…`, for users with is_platform_admin): platform stats,
// organizations (suspend, reactivate), users (suspend, reactivate), the plan catalogue (create,
// edit, delete), the platform configuration, the token signing keys (rotate), and the
// development mailbox.

import { api } from './api.js';
import { h, link, form, field, notice, actionButton, badge, when, table } from './ui.js';

export const ADMIN_TABS = [
  ['stats', 'Overview'], ['organizations', 'Organizations'], ['users', 'Users'], ['plans', 'Plans'],
  ['configs', 'Configuration'], ['signing-keys', 'Signing keys'], ['mailbox', 'Mailbox'],
];

export function adminTabs(page) {
  return h('nav', { class: 'tabs', 'aria-label': 'Platform administration' },
    link('/orgs', 'Organizations (mine)'),
    ADMIN_TABS.map(([p, label]) => link(`/admin/${p}`, label, { 'aria-current': p === page ? 'page' : undefined })));
}

const number = (n) => Number(n || 0).toLocaleString();

async function stats(main) {
  const s = await api('GET', '/v1/admin/stats');
  const g = s.gateway || {};
  main.replaceChildren(
    h('h1', {}, 'Platform'),
    h('section', { class: 'panel' }, h('div', { class: 'stats' },
      [['Organizations', number(s.organizations.total)], ['Suspended', number(s.organizations.suspended)],
        ['Users', number(s.users.total)], ['Active API keys', number(s.api_keys.active)],
        ['Gateway requests (24 h)', number(g.requests)], ['Errors (24 h)', number(g.errors)],
        ['Tokens (24 h)', number(g.total_tokens)], ['Cost (24 h)', `$${Number(g.cost_usd || 0).toFixed(4)}`]]
        .map(([k, v]) => h('div', { class: 'stat' }, h('span', { class: 'muted' }, k), h('strong', {}, v))))));
}

/** A searchable list with a status filter; `columns(reload)` builds the table's columns. */
async function searchable(main, title, path, key, columns, message) {
  const out = h('div', {});
  const top = h('div', {}, message ? notice(message) : null);
  let query = { q: '', status: '' };
  const load = async (msg) => {
    if (msg !== undefined) top.replaceChildren(notice(msg));
    const q = new URLSearchParams({ limit: '100' });
    if (query.q) q.set('q', query.q);
    if (query.status) q.set('status', query.status);
    const page = await api('GET', `${path}?${q}`);
    out.replaceChildren(h('p', { class: 'muted' }, `${page.total} in all`), table(columns(load, top), page[key] || [], 'None match.'));
  };
  main.replaceChildren(h('h1', {}, title), top, h('section', { class: 'panel' },
    form([h('div', { class: 'row' },
      field('Search', 'q', { hint: 'Name, slug or email contains…' }),
      field('Status', 'status', { tag: 'select', options: [{ value: '', label: 'any' }, 'active', 'suspended'] }))],
    'Search', async (v) => { query = v; await load(); }), out));
  await load();
}

async function organizations(main) {
  await searchable(main, 'Organizations', '/v1/admin/organizations', 'organizations', (reload, top) => [
    { label: 'Name', cell: (o) => o.name },
    { label: 'Slug', cell: (o) => h('span', { class: 'mono' }, o.slug) },
    { label: 'Plan', cell: (o) => o.plan },
    { label: 'Members', cell: (o) => String(o.members_count) },
    { label: 'Status', cell: (o) => badge(o.status) },
    { label: 'Created', cell: (o) => when(o.created_at) },
    { label: '', cls: 'actions', cell: (o) => actionButton(o.status === 'suspended' ? 'Reactivate' : 'Suspend', async () => {
      const status = o.status === 'suspended' ? 'active' : 'suspended';
      let reason = '';
      if (status === 'suspended') {
        reason = prompt(`Suspend ${o.name}? Every member and key is refused until it is reactivated. Reason:`, '');
        if (reason === null) return;
      }
      await api('PUT', `/v1/admin/organizations/${o.id}/status`, { status, reason });
      await reload(`${o.name} is ${status}.`);
    }, { cls: o.status === 'suspended' ? 'secondary small' : 'danger small', errorTarget: top, label: `${o.status === 'suspended' ? 'Reactivate' : 'Suspend'} ${o.name}` }) },
  ]);
}

async function users(main) {
  await searchable(main, 'Users', '/v1/admin/users', 'users', (reload, top) => [
    { label: 'Email', cell: (u) => u.email },
    { label: 'Name', cell: (u) => u.name || '—' },
    { label: 'Verified', cell: (u) => (u.email_verified ? 'yes' : 'no') },
    { label: 'MFA', cell: (u) => (u.mfa_enabled ? 'on' : 'off') },
    { label: 'Admin', cell: (u) => (u.is_platform_admin ? 'platform admin' : '') },
    { label: 'Status', cell: (u) => badge(u.status) },
    { label: 'Last sign-in', cell: (u) => when(u.last_login) },
    { label: '', cls: 'actions', cell: (u) => actionButton(u.status === 'suspended' ? 'Reactivate' : 'Suspend', async () => {
      const status = u.status === 'suspended' ? 'active' : 'suspended';
      if (status === 'suspended' && !confirm(`Suspend ${u.email}? Their sessions end and they cannot sign in.`)) return;
      await api('PATCH', `/v1/admin/users/${u.id}`, { status });
      await reload(`${u.email} is ${status}.`);
    }, { cls: u.status === 'suspended' ? 'secondary small' : 'danger small', errorTarget: top, label: `${u.status === 'suspended' ? 'Reactivate' : 'Suspend'} ${u.email}` }) },
  ]);
}

/** The numeric limits every plan states (the API's `LIMIT_NAMES`), empty meaning unlimited. */
const PLAN_LIMITS = ['requests_per_hour', 'api_requests_per_month', 'gateway_requests_per_month',
  'gateway_tokens_per_month', 'members', 'projects'];

const price = (p) => `${(p.amount / 100).toFixed(2)} ${p.currency.toUpperCase()} / ${p.interval}`;

/** A JSON object typed in a textarea, or a 400-like error naming the field. */
function jsonObject(text, name) {
  let v;
  try {
    v = JSON.parse(text && text.trim() ? text : '{}');
  } catch (e) {
    throw Object.assign(new Error(`${name} is not JSON: ${e.message}`), { status: 400 });
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) {
    throw Object.assign(new Error(`${name} must be a JSON object`), { status: 400 });
  }
  return v;
}

/** `next`, plus a null for each key of `previous` it no longer has (PATCH merges, null removes). */
function replacing(previous, next) {
  const out = { ...next };
  for (const k of Object.keys(previous || {})) if (!(k in next)) out[k] = null;
  return out;
}

/** The plan form's fields, filled from `p` when editing. */
function planFields(p) {
  const limits = (p && p.limits) || {};
  return [
    h('div', { class: 'row' },
      field('Plan id', 'id', { value: p ? p.id : '', hint: p ? 'Cannot be changed.' : 'Lowercase letters, digits, - and _ (e.g. team).', attrs: { required: true, maxlength: 40, pattern: '[a-z0-9_-]+', readonly: !!p } }),
      field('Plan name', 'name', { value: p ? p.name : '', attrs: { required: true, maxlength: 100 } })),
    h('div', { class: 'row' },
      field('Amount (minor units)', 'amount', { type: 'number', value: p ? String(p.amount) : '0', hint: 'In cents: 4900 is 49.00.', attrs: { required: true, min: 0, step: 1 } }),
      field('Currency', 'currency', { value: p ? p.currency : 'usd', hint: 'ISO 4217, lowercase.', attrs: { required: true, maxlength: 3, minlength: 3 } }),
      field('Interval', 'interval', { tag: 'select', options: ['month', 'year'], value: p ? p.interval : 'month' })),
    h('fieldset', {}, h('legend', {}, 'Limits (empty: unlimited)'),
      h('div', { class: 'row' }, PLAN_LIMITS.map((k) => field(k, `limit.${k}`, {
        type: 'number', value: limits[k] == null ? '' : String(limits[k]), attrs: { min: 0, step: 1 },
      })))),
    field('Features (JSON object)', 'features', { tag: 'textarea', value: JSON.stringify((p && p.features) || {}, null, 2), attrs: { rows: 5, spellcheck: 'false' } }),
    field('Overage prices (JSON object)', 'overage_prices', { tag: 'textarea', value: JSON.stringify((p && p.overage_prices) || {}, null, 2), hint: 'Per billable limit: {"gateway_tokens_per_month": {"per": 1000, "amount": 2}} (amount in minor units per block).', attrs: { rows: 6, spellcheck: 'false' } }),
  ];
}

/** The form's values as the API's plan body (`p`: the plan being edited, for PATCH). */
function planBody(v, p) {
  const limits = {};
  for (const k of PLAN_LIMITS) {
    const raw = (v[`limit.${k}`] || '').trim();
    limits[k] = raw === '' ? null : Number(raw);
  }
  const features = jsonObject(v.features, 'Features');
  const overage = jsonObject(v.overage_prices, 'Overage prices');
  const body = {
    name: v.name, amount: Number(v.amount), currency: (v.currency || '').trim(), interval: v.interval, limits,
    features: p ? replacing(p.features, features) : features,
    overage_prices: p ? replacing(p.overage_prices, overage) : overage,
  };
  if (!p) body.id = (v.id || '').trim();
  return body;
}

async function plans(main, message = null, editing = null) {
  const list = await api('GET', '/v1/admin/plans?limit=100');
  const rows = list.plans || [];
  const top = h('div', {}, message ? notice(message) : null);
  const reload = (msg, edit = null) => plans(main, msg, edit);
  // A plan's object as a list ("gateway tokens per month: 5,000,000"); `show` formats a value.
  const compact = (o, show = (v) => (v === null ? 'unlimited' : typeof v === 'number' ? number(v) : typeof v === 'object' ? JSON.stringify(v) : String(v))) => {
    const entries = Object.entries(o || {});
    return entries.length
      ? h('ul', { class: 'kv' }, entries.map(([k, v]) => h('li', {}, h('span', { class: 'muted' }, k.replaceAll('_', ' ')), ': ', show(v))))
      : '—';
  };
  const overage = (p) => compact(p.overage_prices, (v) => (v && typeof v === 'object' && 'per' in v
    ? `${(Number(v.amount) / 100).toFixed(2)} ${p.currency.toUpperCase()} per ${number(v.per)}`
    : JSON.stringify(v)));
  const edited = editing && rows.find((p) => p.id === editing);
  const editor = edited ? h('section', { class: 'panel', id: 'plan-editor', 'aria-labelledby': 'plan-editor-title' },
    h('h2', { id: 'plan-editor-title' }, `Edit plan ${edited.id}`),
    form(planFields(edited), 'Save plan', async (v) => {
      await api('PATCH', `/v1/admin/plans/${encodeURIComponent(edited.id)}`, planBody(v, edited));
      await reload(`${v.name} is saved.`);
    }, { busyText: 'Saving…', secondary: h('button', { type: 'button', class: 'secondary', onclick: () => reload() }, 'Cancel') })) : null;
  main.replaceChildren(...[
    h('h1', {}, 'Plans'),
    top,
    editor,
    h('section', { class: 'panel' },
      h('h2', {}, `Catalogue (${rows.length})`),
      h('p', { class: 'muted' }, 'Every node reloads the catalogue when a plan changes. The default plan (smb) and plans organizations are on cannot be deleted.'),
      table([
        { label: 'Plan', cell: (p) => [h('strong', {}, p.name), h('div', { class: 'mono nowrap muted' }, p.id)] },
        { label: 'Price', cell: (p) => price(p) },
        { label: 'Limits', cell: (p) => compact(p.limits) },
        { label: 'Features', cell: (p) => compact(p.features) },
        { label: 'Overage', cell: overage },
        { label: '', cls: 'actions', cell: (p) => [
          actionButton('Edit', async () => {
            await reload(null, p.id);
            const first = document.querySelector('#plan-editor input[name=name]');
            if (first) first.focus();
          }, { errorTarget: top, label: `Edit ${p.id}` }),
          actionButton('Delete', async () => {
            if (!confirm(`Delete the plan “${p.name}” (${p.id})?`)) return;
            await api('DELETE', `/v1/admin/plans/${encodeURIComponent(p.id)}`);
            await reload(`${p.name} is deleted.`);
          }, { cls: 'danger small', errorTarget: top, label: `Delete ${p.id}` }),
        ] },
      ], rows, 'No plans.')),
    h('section', { class: 'panel', id: 'plan-create', 'aria-labelledby': 'plan-create-title' },
      h('h2', { id: 'plan-create-title' }, 'Create a plan'),
      form(planFields(null), 'Create plan', async (v) => {
        const body = planBody(v, null);
        await api('POST', '/v1/admin/plans', body);
        await reload(`${body.name} is created.`);
      }, { busyText: 'Creating…' }))].filter(Boolean));
}

async function configs(main, message = null) {
  const list = await api('GET', '/v1/admin/configs?limit=100');
  const top = h('div', {}, message ? notice(message) : null);
  const editor = (c) => {
    const id = `cfg-${c.key}`;
    const input = typeof c.value === 'boolean'
      ? h('select', { id, name: 'value' }, ['true', 'false'].map((v) => h('option', { value: v, selected: String(c.value) === v }, v)))
      : h('input', { id, name: 'value', type: typeof c.value === 'number' ? 'number' : 'text', value: String(c.value) });
    return form([h('label', { for: id, class: 'sr-only' }, c.key), input], 'Set', async (v) => {
      const value = typeof c.value === 'boolean' ? v.value === 'true' : typeof c.value === 'number' ? Number(v.value) : v.value;
      await api('PUT', `/v1/admin/configs/${c.key}`, { value });
      await configs(main, `${c.key} is ${value} on every node.`);
    }, { busyText: 'Setting…' });
  };
  main.replaceChildren(h('h1', {}, 'Platform configuration'), top, h('section', { class: 'panel' }, table([
    { label: 'Key', cell: (c) => [h('strong', { class: 'mono' }, c.key), h('div', { class: 'muted' }, c.description)] },
    { label: 'Default', cell: (c) => h('span', { class: 'mono' }, String(c.default)) },
    { label: 'Value', cell: editor },
    { label: 'Set', cell: (c) => (c.updated_at ? when(c.updated_at) : 'never') },
  ], list.configs || [])));
}

async function signingKeys(main, message = null) {
  const list = await api('GET', '/v1/admin/signing-keys?limit=100');
  const top = h('div', {}, message ? notice(message) : null);
  main.replaceChildren(h('h1', {}, 'Token signing keys'), top, h('section', { class: 'panel' },
    h('p', { class: 'muted' }, 'Access tokens are signed with the active key; a retired key stays published (and verifying) for the token lifetime plus 5 minutes.'),
    table([
      { label: 'Key id', cell: (k) => h('span', { class: 'mono' }, k.id) },
      { label: 'Algorithm', cell: (k) => k.algorithm },
      { label: 'Status', cell: (k) => badge(k.status) },
      { label: 'Created', cell: (k) => when(k.created_at) },
      { label: 'Published until', cell: (k) => when(k.published_until) },
    ], list.signing_keys || []),
    h('div', { class: 'row buttons' }, actionButton('Rotate now', async () => {
      if (!confirm('Make a new signing key active? Tokens signed with the old one keep working until they expire.')) return;
      await api('POST', '/v1/admin/signing-keys/rotate', {});
      await signingKeys(main, 'A new signing key is active.');
    }, { cls: '', errorTarget: top }))));
}

async function mailbox(main) {
  const out = h('div', {});
  const load = async (to) => {
    const q = new URLSearchParams({ limit: '50' });
    if (to) q.set('to', to);
    const page = await api('GET', `/v1/admin/mailbox?${q}`);
    out.replaceChildren(table([
      { label: 'When', cell: (m) => when(m.created_at) },
      { label: 'To', cell: (m) => m.to },
      { label: 'Subject', cell: (m) => h('details', {}, h('summary', {}, m.subject), h('pre', { class: 'mail' }, m.body)) },
    ], page.messages || [], 'No mail.'));
  };
  main.replaceChildren(h('h1', {}, 'Development mailbox'),
    h('p', { class: 'muted' }, 'Without smtp_url, the mails the server sends are kept here (and in its log).'),
    h('section', { class: 'panel' }, form([field('To', 'to', { type: 'email' })], 'Filter', async (v) => load(v.to)), out));
  await load('');
}

export const ADMIN_PAGES = { stats, organizations, users, plans, configs, 'signing-keys': signingKeys, mailbox };
