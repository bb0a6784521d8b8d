// The signed-in pages: the organizations list (and creating one), the shell of an organization
// (organization and environment switchers, tabs) and its pages: members and invitations, API keys.

import { api, download, selectTenant, tenant, currentUser, signOut, gatewayChat } from './api.js';
import { h, mount, go, link, form, field, notice, errorBox, actionButton, badge, when, table, secretPanel } from './ui.js';
import { providers, policies, logs } from './gateway.js';
import { webhooks } from './webhooks.js';
import { account } from './account.js';
import { usage } from './usage.js';
import { settings, billing } from './settings.js';
import { ADMIN_PAGES, adminTabs } from './admin.js';

const ROLES = ['viewer', 'member', 'editor', 'admin', 'owner'];
const ENV_KEY = 'gatehouse.environment';

/** Every scope a key can carry (src/keys/mod.rs SCOPES), in the API's order. */
const SCOPES = [
  'organizations:create', 'organizations:read', 'organizations:update', 'members:read',
  'members:manage', 'api_keys:read', 'api_keys:manage', 'billing:read', 'billing:manage',
  'usage:read', 'webhooks:manage', 'audit:read', 'configs:read', 'configs:manage',
  'policies:read', 'policies:manage', 'analytics:read', 'gateway:proxy',
];

export function environment() { return sessionStorage.getItem(ENV_KEY) || 'live'; }

function topbar(orgs, current, page) {
  const orgSelect = h('select', { id: 'org-switcher', onchange: (e) => {
    const v = e.target.value;
    go(v ? `/orgs/${v}/${page}` : '/orgs');
  } },
  orgs.map((o) => h('option', { value: o.id, selected: current && o.id === current.id }, o.name)),
  h('option', { value: '' }, 'All organizations…'));
  const envSelect = h('select', { id: 'env-switcher', onchange: (e) => {
    sessionStorage.setItem(ENV_KEY, e.target.value);
    go(location.pathname, true);
  } }, ['live', 'test'].map((e) => h('option', { value: e, selected: e === environment() }, e)));
  const user = currentUser();
  return h('header', { class: 'topbar' },
    h('div', { class: 'brand' }, 'Gatehouse'),
    current ? h('label', { for: 'org-switcher' }, 'Organization', orgSelect) : null,
    current ? h('label', { for: 'env-switcher' }, 'Environment', envSelect) : null,
    current && environment() === 'test' ? h('span', { class: 'env-test' }, 'TEST DATA') : null,
    h('span', { class: 'spacer' }),
    user && user.is_platform_admin ? link('/admin/stats', 'Platform admin', { class: 'account-link' }) : null,
    user ? link('/account', user.email, { class: 'account-link', 'aria-label': `Your account (${user.email})` }) : null,
    h('button', { type: 'button', onclick: async () => { await signOut(); go('/login', true); } }, 'Sign out'));
}

const TABS = [
  ['members', 'Members'], ['keys', 'API keys'], ['providers', 'Providers'], ['policies', 'Policies'],
  ['webhooks', 'Webhooks'], ['usage', 'Usage'], ['logs', 'Requests'], ['audit', 'Audit log'],
  ['billing', 'Billing'], ['settings', 'Settings'],
];

function tabs(org, page) {
  return h('nav', { class: 'tabs', 'aria-label': 'Organization' },
    TABS.map(([p, label]) => link(`/orgs/${org.id}/${p}`, label, { 'aria-current': p === page ? 'page' : undefined })));
}

async function myOrgs() {
  const list = await api('GET', '/v1/organizations?limit=100');
  return list.organizations || [];
}

export async function orgList(root) {
  const orgs = await myOrgs();
  const status = h('div', {});
  mount(root,
    topbar(orgs, null, 'members'),
    h('main', { id: 'main' },
      h('h1', {}, 'Your organizations'),
      h('section', { class: 'panel' },
        orgs.length
          ? h('ul', { class: 'orglist' }, orgs.map((o) => h('li', {}, link(`/orgs/${o.id}/members`, `${o.name}`), ' ')))
          : h('p', { class: 'empty' }, 'You do not belong to an organization yet. Create one, or accept an invitation from your email.')),
      h('section', { class: 'panel' },
        h('h2', {}, 'Create an organization'),
        form([
          h('div', { class: 'row' },
            field('Name', 'name', { attrs: { required: true, maxlength: 100 } }),
            field('Slug', 'slug', { hint: 'Optional: lowercase letters, digits and hyphens (derived from the name otherwise).', attrs: { pattern: '[a-z0-9\\-]*', maxlength: 64 } })),
        ], 'Create organization', async (v) => {
          const body = { name: v.name };
          if (v.slug) body.slug = v.slug;
          const org = await api('POST', '/v1/organizations', body);
          go(`/orgs/${org.id}/members`);
        }, { busyText: 'Creating…' }),
        status)));
}

/** The account page, in the shell without an organization. */
export async function accountPage(root) {
  const orgs = await myOrgs();
  const main = h('main', { id: 'main' });
  mount(root, topbar(orgs, null, 'members'),
    h('nav', { class: 'tabs', 'aria-label': 'Account' }, link('/orgs', 'Organizations'), link('/account', 'Account', { 'aria-current': 'page' })),
    main);
  await account(main);
}

/** A platform admin's page, in the shell without an organization. */
export async function adminPage(root, page) {
  const user = currentUser();
  if (!user || !user.is_platform_admin) return go('/orgs', true);
  const render = ADMIN_PAGES[page];
  if (!render) return go('/admin/stats', true);
  // The admin pages work in maintenance, when the organization routes answer 503.
  const orgs = await myOrgs().catch(() => []);
  const main = h('main', { id: 'main' });
  mount(root, topbar(orgs, null, 'members'), adminTabs(page), main);
  try {
    await render(main);
  } catch (err) {
    main.replaceChildren(errorBox(err));
  }
}

/** The shell of an organization's page: scoped token for (org, environment), bar, tabs, page. */
export async function orgPage(root, orgRef, page) {
  const env = environment();
  let t = tenant();
  if (!t || (t.org !== orgRef && t.id !== orgRef) || t.env !== env) t = await selectTenant(orgRef, env);
  const [orgs, org] = await Promise.all([myOrgs(), api('GET', `/v1/organizations/${t.id}`, undefined, 'tenant')]);
  const main = h('main', { id: 'main' });
  mount(root, topbar(orgs, org, page), tabs(org, page), main);
  // On a phone the tabs scroll sideways: keep the current one in view.
  const current = root.querySelector('nav.tabs [aria-current=page]');
  if (current) current.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  const render = { members, keys, providers, policies, webhooks, usage, logs, audit, billing, settings }[page];
  if (!render) return go(`/orgs/${org.id}/members`, true);
  try {
    await render(main, org, t);
  } catch (err) {
    main.replaceChildren(errorBox(err));
  }
}

// ---- Members and invitations -------------------------------------------------------------

async function members(main, org, t, message = null) {
  const base = `/v1/organizations/${org.id}`;
  const errors = h('div', {}, message ? notice(message) : null);
  const canManage = ['admin', 'owner'].includes(t.role);
  const [list, invitations] = await Promise.all([
    api('GET', `${base}/members?limit=100`, undefined, 'tenant'),
    canManage ? api('GET', `${base}/invitations?status=pending&limit=100`, undefined, 'tenant') : null,
  ]);
  const reload = (msg) => members(main, org, t, msg);
  const people = (list.members || []).filter((m) => m.status !== 'pending_invite');
  const roleCell = (m) => {
    if (!canManage) return m.role;
    const sel = h('select', { 'aria-label': `Role of ${m.email}` }, ROLES.map((r) => h('option', { value: r, selected: r === m.role }, r)));
    sel.addEventListener('change', async () => {
      sel.disabled = true;
      try {
        await api('PATCH', `${base}/members/${m.id}`, { role: sel.value }, 'tenant');
        errors.replaceChildren(notice(`${m.email} is now ${sel.value}.`));
      } catch (err) {
        sel.value = m.role;
        errors.replaceChildren(errorBox(err));
      } finally {
        sel.disabled = false;
      }
    });
    return sel;
  };
  main.replaceChildren(
    h('h1', {}, `Members of ${org.name}`),
    errors,
    canManage ? h('section', { class: 'panel' },
      h('h2', {}, 'Invite someone'),
      form([
        h('div', { class: 'row' },
          field('Email', 'email', { type: 'email', attrs: { required: true, autocomplete: 'off' } }),
          field('Role', 'role', { tag: 'select', options: ROLES, value: 'member' })),
      ], 'Send invitation', async (v) => {
        await api('POST', `${base}/invitations`, { email: v.email, role: v.role }, 'tenant');
        await reload(`Invitation sent to ${v.email}.`);
      }, { busyText: 'Sending…' })) : null,
    h('section', { class: 'panel' },
      h('h2', {}, `Members (${people.length})`),
      table([
        { label: 'Name', cell: (m) => m.name || '—' },
        { label: 'Email', cell: (m) => m.email },
        { label: 'Role', cell: roleCell },
        { label: 'MFA', cell: (m) => (m.mfa_enabled ? 'on' : 'off') },
        { label: 'Last sign-in', cell: (m) => when(m.last_login) },
        { label: '', cls: 'actions', cell: (m) => canManage ? actionButton('Remove', async () => {
          if (!confirm(`Remove ${m.email} from ${org.name}?`)) return;
          await api('DELETE', `${base}/members/${m.id}`, undefined, 'tenant');
          await reload();
        }, { cls: 'danger small', errorTarget: errors, label: `Remove ${m.email}` }) : null },
      ], people)),
    invitations ? h('section', { class: 'panel' },
      h('h2', {}, `Pending invitations (${(invitations.invitations || []).length})`),
      table([
        { label: 'Email', cell: (i) => i.email },
        { label: 'Role', cell: (i) => i.role },
        { label: 'Status', cell: (i) => badge(i.status) },
        { label: 'Expires', cell: (i) => when(i.expires_at) },
        { label: '', cls: 'actions', cell: (i) => [
          actionButton('Resend', async () => {
            await api('POST', `${base}/invitations/${i.id}/resend`, undefined, 'tenant');
            errors.replaceChildren(notice(`Invitation sent to ${i.email} again.`));
          }, { errorTarget: errors, label: `Resend the invitation to ${i.email}` }),
          actionButton('Revoke', async () => {
            if (!confirm(`Revoke the invitation to ${i.email}?`)) return;
            await api('DELETE', `${base}/invitations/${i.id}`, undefined, 'tenant');
            await reload();
          }, { cls: 'danger small', errorTarget: errors, label: `Revoke the invitation to ${i.email}` }),
        ] },
      ], invitations.invitations || [], 'No pending invitations.')) : null);
}

// ---- API keys ----------------------------------------------------------------------------

let rolesDoc = null;
async function scopesOfRole(role) {
  if (!rolesDoc) rolesDoc = await api('GET', '/v1/roles?limit=100', undefined, 'none');
  const r = (rolesDoc.roles || []).find((x) => x.id === role);
  return new Set(r ? r.permissions : []);
}

/**
 * "Try it": a chat completion through the gateway with the key just shown (the secret is in the
 * page only now), so the answer — or the policy that refuses it — and then the call in the
 * Requests and Usage pages can be seen. Test keys are answered by the mock provider.
 */
function tryIt(token) {
  const out = h('div', { role: 'status' });
  return h('section', { class: 'try', 'aria-label': 'Try the key' },
    h('strong', {}, 'Try it: send a prompt through the gateway with this key'),
    form([
      h('div', { class: 'row' },
        field('Model', 'model', { value: 'gpt-4o-mini', attrs: { required: true } }),
        field('Prompt', 'prompt', { value: 'Say hello', attrs: { required: true } })),
    ], 'Send', async (v) => {
      out.replaceChildren();
      const started = performance.now();
      const r = await gatewayChat(token, v.model, v.prompt);
      const text = r.choices && r.choices[0] && r.choices[0].message ? r.choices[0].message.content : JSON.stringify(r);
      const u = r.usage || {};
      out.replaceChildren(
        h('div', { class: 'notice' }, h('div', {}, h('strong', {}, 'Answer: '), text),
          h('div', { class: 'muted' }, `${r.model || v.model} · ${u.prompt_tokens ?? '?'} + ${u.completion_tokens ?? '?'} tokens · ${Math.round(performance.now() - started)} ms`)));
    }, { busyText: 'Sending…' }),
    out);
}

/** A key's secret, shown once (with "Try it" for a gateway key). */
function keySecret(title, token, onDone, withTry = false) {
  return secretPanel({
    title, secret: token, region: 'New key', copyText: 'Copy key', onDone,
    note: 'Copy it now: it is shown only this once and cannot be read again.',
    extra: withTry ? tryIt(token) : null,
  });
}

async function keys(main, org, t) {
  const base = `/v1/organizations/${org.id}/api-keys`;
  const errors = h('div', {});
  const shown = h('div', {});
  const held = await scopesOfRole(t.role);
  const canManage = held.has('api_keys:manage');
  const list = await api('GET', `${base}?limit=100`, undefined, 'tenant');
  const reload = async (keep) => {
    await keys(main, org, t);
    if (keep) main.querySelector('#key-secret').replaceChildren(keep);
  };

  const scopeBoxes = h('fieldset', {},
    h('legend', {}, 'Scopes'),
    h('p', { class: 'muted' }, 'Leave every box empty for all the scopes your role holds. Scopes beyond your role are greyed out.'),
    h('div', { class: 'scopes' }, SCOPES.map((s) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'scope', value: s, disabled: !held.has(s) }), h('span', { class: 'mono' }, s)))));

  const createForm = form([
    h('div', { class: 'row' },
      field('Name', 'name', { attrs: { required: true, maxlength: 100 } }),
      field('Type', 'type', { tag: 'select', options: [{ value: 'secret', label: 'secret (server side)' }, { value: 'publishable', label: 'publishable (browser)' }], value: 'secret' }),
      field('Expires after (days)', 'expires_in_days', { type: 'number', hint: 'Empty: never.', attrs: { min: 1, max: 3650 } })),
    scopeBoxes,
    field('Allowed origins (publishable keys)', 'allowed_origins', { tag: 'textarea', hint: 'One per line, e.g. https://app.example.com' }),
  ], `Create ${t.env} key`, async (v, f) => {
    const body = { name: v.name, type: v.type, environment: t.env };
    const scopes = [...f.querySelectorAll('input[name=scope]:checked')].map((i) => i.value);
    if (v.type === 'secret' && scopes.length) body.scopes = scopes;
    if (v.expires_in_days) body.expires_in_days = Number(v.expires_in_days);
    const origins = (v.allowed_origins || '').split('\n').map((s) => s.trim()).filter(Boolean);
    if (origins.length) body.allowed_origins = origins;
    const key = await api('POST', base, body, 'tenant');
    const proxy = key.type === 'secret' && Array.isArray(key.scopes) && key.scopes.includes('gateway:proxy');
    await reload(keySecret(`Your new key “${key.name}”`, key.token, () => main.querySelector('#key-secret').replaceChildren(), proxy));
    main.querySelector('#key-secret button').focus();
  }, { busyText: 'Creating…' });

  const rotate = (k) => {
    const grace = field('The old value keeps working for', 'grace_period_seconds', {
      tag: 'select', value: '86400',
      options: [{ value: '0', label: 'no time: it stops now' }, { value: '3600', label: '1 hour' }, { value: '86400', label: '24 hours' }, { value: '604800', label: '7 days' }],
    });
    shown.replaceChildren(h('section', { class: 'panel', 'aria-label': `Rotate ${k.name}` },
      h('h2', {}, `Rotate “${k.name}”`),
      h('p', {}, 'Rotation issues a new value for this key; the old value stops after the grace period.'),
      form([grace], 'Rotate key', async (v) => {
        const r = await api('POST', `${base}/${k.id}/rotations`, { grace_period_seconds: Number(v.grace_period_seconds) }, 'tenant');
        shown.replaceChildren();
        await reload(keySecret(`New value of “${k.name}”`, r.token, () => main.querySelector('#key-secret').replaceChildren()));
        main.querySelector('#key-secret button').focus();
      }, { busyText: 'Rotating…', secondary: h('button', { type: 'button', class: 'secondary', onclick: () => shown.replaceChildren() }, 'Cancel') })));
    shown.querySelector('select').focus();
  };

  const actions = (k) => {
    if (!canManage || k.status === 'revoked' || k.status === 'expired') return null;
    return [
      actionButton('Rotate', async () => rotate(k), { label: `Rotate ${k.name}` }),
      k.status === 'disabled'
        ? actionButton('Enable', async () => { await api('PATCH', `${base}/${k.id}`, { status: 'active' }, 'tenant'); await reload(); }, { errorTarget: errors, label: `Enable ${k.name}` })
        : actionButton('Disable', async () => { await api('PATCH', `${base}/${k.id}`, { status: 'disabled' }, 'tenant'); await reload(); }, { errorTarget: errors, label: `Disable ${k.name}` }),
      actionButton('Revoke', async () => {
        if (!confirm(`Revoke “${k.name}”? Every request with it will be refused, for good.`)) return;
        await api('DELETE', `${base}/${k.id}`, undefined, 'tenant');
        await reload();
      }, { cls: 'danger small', errorTarget: errors, label: `Revoke ${k.name}` }),
    ];
  };

  const rows = list.api_keys || [];
  main.replaceChildren(
    h('h1', {}, `API keys — ${t.env}`),
    h('div', { id: 'key-secret' }),
    errors,
    shown,
    h('section', { class: 'panel' },
      h('h2', {}, `Keys (${rows.length})`),
      table([
        { label: 'Name', cell: (k) => k.name },
        { label: 'Key', cell: (k) => h('span', { class: 'mono nowrap' }, k.key_preview) },
        { label: 'Type', cell: (k) => k.type },
        { label: 'Scopes', cell: scopesCell },
        { label: 'Status', cell: (k) => [badge(k.status), k.grace_expires_at ? h('div', { class: 'muted' }, `old value until ${when(k.grace_expires_at)}`) : null] },
        { label: 'Last used', cell: (k) => when(k.last_used_at) },
        { label: '', cls: 'actions', cell: actions },
      ], rows, `No ${t.env} keys yet.`)),
    canManage ? h('section', { class: 'panel' }, h('h2', {}, 'Create a key'), createForm) : null);
}

/** A key's scopes: listed when few, else a count that opens to the list. */
function scopesCell(k) {
  const scopes = Array.isArray(k.scopes) ? k.scopes : [];
  if (!scopes.length) return '—';
  if (scopes.length <= 4) return scopes.join(', ');
  return h('details', {}, h('summary', {}, `${scopes.length} scopes`), scopes.join(', '));
}

// ---- Audit log ---------------------------------------------------------------------------

async function audit(main, org) {
  const base = `/v1/organizations/${org.id}/audit`;
  const out = h('div', {});
  let query = {};
  // Actors by email where they are members (a caller who may not list members sees ids).
  const people = new Map();
  try {
    const list = await api('GET', `/v1/organizations/${org.id}/members?limit=100`, undefined, 'tenant');
    for (const m of list.members || []) people.set(m.id, m.email);
  } catch { /* ids then */ }
  const exportCsv = actionButton('Export CSV', async () => {
    const q = new URLSearchParams({ format: 'csv' });
    for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
    await download(`${base}?${q}`, `audit-${org.slug}.csv`);
  }, { errorTarget: out });
  const load = async (query, next) => {
    const q = new URLSearchParams({ limit: '50' });
    for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
    if (next) q.set(next[0], next[1]);
    const page = await api('GET', `${base}?${q}`, undefined, 'tenant');
    const entries = page.events || [];
    const shown = (next && next[0] === 'offset' ? Number(next[1]) : 0) + entries.length;
    const after = page.next_cursor ? ['cursor', page.next_cursor] : page.has_more ? ['offset', String(shown)] : null;
    const more = after ? actionButton('Older entries', () => load(query, after)) : null;
    out.replaceChildren(...[table([
      { label: 'When', cell: (e) => when(e.created_at) },
      { label: 'Action', cell: (e) => h('span', { class: 'mono' }, e.action) },
      { label: 'Actor', cell: (e) => people.get(e.actor_id) || h('span', { class: 'mono' }, [e.actor_type, e.actor_id].filter(Boolean).join(' ')) },
      { label: 'Resource', cell: (e) => h('span', { class: 'mono' }, [e.resource_type, e.resource_id].filter(Boolean).join(' ')) },
    ], entries, 'No entries match.'), more].filter(Boolean));
  };
  main.replaceChildren(
    h('h1', {}, 'Audit log'),
    h('section', { class: 'panel' }, form([
      h('div', { class: 'row' },
        field('Action', 'action', { hint: 'e.g. api_key.created' }),
        field('From', 'start_date', { type: 'datetime-local' }),
        field('To', 'end_date', { type: 'datetime-local' })),
    ], 'Filter', async (v) => {
      const iso = (s) => (s ? new Date(s).toISOString() : '');
      query = { action: v.action, start_date: iso(v.start_date), end_date: iso(v.end_date) };
      await load(query);
    }, { secondary: exportCsv }), out));
  await load(query);
}
