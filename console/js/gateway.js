// The AI gateway's pages of an organization: providers, policies, the usage log and the policy
// violations. Each works in the environment of the scoped token (live or test).

import { api } from './api.js';
import { h, form, field, notice, errorBox, actionButton, badge, when, table } from './ui.js';

const KINDS = ['openai', 'anthropic', 'google', 'azure', 'openai_compatible', 'mock'];

/** A comma- or newline-separated list as an array. */
const list = (text) => (text || '').split(/[\n,]/).map((s) => s.trim()).filter(Boolean);

export async function providers(main, org, t, message = null) {
  const base = `/v1/organizations/${org.id}/providers`;
  const errors = h('div', {}, message ? notice(message) : null);
  const canManage = ['admin', 'owner'].includes(t.role);
  const page = await api('GET', `${base}?limit=100`, undefined, 'tenant');
  const reload = (msg) => providers(main, org, t, msg);
  const rows = page.providers || [];
  const toggle = (p) => actionButton(p.enabled ? 'Disable' : 'Enable', async () => {
    await api('PATCH', `${base}/${p.id}`, { enabled: !p.enabled }, 'tenant');
    await reload(`${p.name} is ${p.enabled ? 'disabled' : 'enabled'}.`);
  }, { errorTarget: errors, label: `${p.enabled ? 'Disable' : 'Enable'} ${p.name}` });
  const remove = (p) => actionButton('Delete', async () => {
    if (!confirm(`Delete the provider “${p.name}”? Its stored key is deleted with it.`)) return;
    await api('DELETE', `${base}/${p.id}`, undefined, 'tenant');
    await reload(`${p.name} is deleted.`);
  }, { cls: 'danger small', errorTarget: errors, label: `Delete ${p.name}` });
  main.replaceChildren(
    h('h1', {}, `Providers — ${t.env}`),
    errors,
    h('section', { class: 'panel' },
      h('h2', {}, `Providers (${rows.length})`),
      h('p', { class: 'muted' }, t.env === 'test'
        ? 'Test keys use the built-in mock provider when no test provider is configured.'
        : 'Live keys are answered by these providers, in priority order, falling back on errors.'),
      table([
        { label: 'Name', cell: (p) => p.name },
        { label: 'Provider', cell: (p) => p.provider },
        { label: 'Base URL', cell: (p) => h('span', { class: 'mono' }, p.base_url || 'default') },
        { label: 'Models', cell: (p) => (Array.isArray(p.models) && p.models.length ? p.models.join(', ') : 'all') },
        { label: 'Priority', cell: (p) => String(p.priority) },
        { label: 'Key', cell: (p) => (p.api_key_set ? 'stored' : 'none') },
        { label: 'Status', cell: (p) => badge(p.enabled ? 'active' : 'disabled') },
        { label: '', cls: 'actions', cell: (p) => (canManage ? [toggle(p), remove(p)] : null) },
      ], rows, `No ${t.env} providers yet.`)),
    canManage ? h('section', { class: 'panel' },
      h('h2', {}, 'Add a provider'),
      form([
        h('div', { class: 'row' },
          field('Provider', 'provider', { tag: 'select', options: KINDS, value: 'openai' }),
          field('Provider name', 'name', { attrs: { required: true, maxlength: 100 } }),
          field('Priority', 'priority', { type: 'number', value: '0', hint: 'Lower is tried first.', attrs: { min: 0, max: 1000 } })),
        field('Base URL', 'base_url', { type: 'url', hint: 'Empty: the provider’s own. Must be a public address.' }),
        field('Provider API key', 'api_key', { type: 'password', hint: 'Write-only: stored encrypted, never shown again.', attrs: { autocomplete: 'off' } }),
        field('Models', 'models', { hint: 'Comma-separated; empty: every model.' }),
      ], `Add ${t.env} provider`, async (v) => {
        const body = { provider: v.provider, name: v.name, environment: t.env, priority: Number(v.priority || 0) };
        if (v.base_url) body.base_url = v.base_url;
        if (v.api_key) body.api_key = v.api_key;
        const models = list(v.models);
        if (models.length) body.models = models;
        await api('POST', base, body, 'tenant');
        await reload(`${v.name} is added.`);
      }, { busyText: 'Adding…' })) : null);
}

const POLICY_TYPES = {
  pii: { kinds: ['email', 'credit_card'] },
  secrets: {},
  keyword: { keywords: ['project falcon'] },
  regex: { pattern: 'ACME-[0-9]{6}', label: 'order number' },
  model_allowlist: { models: ['gpt-4o-mini'] },
  model_denylist: { models: ['gpt-4o'] },
  max_tokens: { max: 1024 },
  prompt_injection: {},
};

export async function policies(main, org, t, message = null) {
  const base = `/v1/organizations/${org.id}/policies`;
  const errors = h('div', {}, message ? notice(message) : null);
  const canManage = ['editor', 'admin', 'owner'].includes(t.role);
  const page = await api('GET', `${base}?limit=100`, undefined, 'tenant');
  const reload = (msg) => policies(main, org, t, msg);
  const rows = page.policies || [];
  const writable = (p) => ({
    name: p.name, description: p.description || '', enabled: p.enabled, type: p.type,
    config: p.config, action: p.action, applies_to: p.applies_to, severity: p.severity,
  });
  const toggle = (p) => actionButton(p.enabled ? 'Disable' : 'Enable', async () => {
    await api('PUT', `${base}/${p.id}`, { ...writable(p), enabled: !p.enabled }, 'tenant');
    await reload(`${p.name} is ${p.enabled ? 'disabled' : 'enabled'}.`);
  }, { errorTarget: errors, label: `${p.enabled ? 'Disable' : 'Enable'} ${p.name}` });
  const remove = (p) => actionButton('Delete', async () => {
    if (!confirm(`Delete the policy “${p.name}”?`)) return;
    await api('DELETE', `${base}/${p.id}`, undefined, 'tenant');
    await reload(`${p.name} is deleted.`);
  }, { cls: 'danger small', errorTarget: errors, label: `Delete ${p.name}` });

  const config = field('Configuration (JSON)', 'config', { tag: 'textarea', attrs: { rows: 7, spellcheck: 'false' }, value: JSON.stringify(POLICY_TYPES.pii, null, 2), hint: 'docs/policies.md lists each type’s fields; the stored form is shown after saving.' });
  const type = field('Type', 'type', { tag: 'select', options: Object.keys(POLICY_TYPES), value: 'pii' });
  type.querySelector('select').addEventListener('change', (e) => {
    config.querySelector('textarea').value = JSON.stringify(POLICY_TYPES[e.target.value], null, 2);
  });
  main.replaceChildren(
    h('h1', {}, 'Policies'),
    errors,
    h('section', { class: 'panel' },
      h('h2', {}, `Rules (${rows.length})`),
      table([
        { label: 'Name', cell: (p) => p.name },
        { label: 'Type', cell: (p) => p.type },
        { label: 'Action', cell: (p) => p.action },
        { label: 'Applies to', cell: (p) => p.applies_to },
        { label: 'Severity', cell: (p) => p.severity },
        { label: 'Configuration', cell: (p) => h('code', {}, JSON.stringify(p.config)) },
        { label: 'Status', cell: (p) => badge(p.enabled ? 'active' : 'disabled') },
        { label: '', cls: 'actions', cell: (p) => (canManage ? [toggle(p), remove(p)] : null) },
      ], rows, 'No rules: every request passes.')),
    tryPolicies(base, rows),
    canManage ? h('section', { class: 'panel' },
      h('h2', {}, 'Add a rule'),
      form([
        h('div', { class: 'row' },
          field('Rule name', 'name', { attrs: { required: true, maxlength: 200 } }),
          type),
        h('div', { class: 'row' },
          field('Action', 'action', { tag: 'select', options: ['block', 'redact', 'flag'], value: 'flag' }),
          field('Applies to', 'applies_to', { tag: 'select', options: ['request', 'response', 'both'], value: 'request' }),
          field('Severity', 'severity', { tag: 'select', options: ['low', 'medium', 'high', 'critical'], value: 'medium' })),
        config,
        field('Description', 'description', { attrs: { maxlength: 1000 } }),
      ], 'Add rule', async (v) => {
        let parsed;
        try {
          parsed = JSON.parse(v.config || '{}');
        } catch (e) {
          throw Object.assign(new Error(`The configuration is not JSON: ${e.message}`), { status: 400 });
        }
        await api('POST', base, {
          name: v.name, type: v.type, config: parsed, action: v.action,
          applies_to: v.applies_to, severity: v.severity, description: v.description, enabled: true,
        }, 'tenant');
        await reload(`${v.name} is added.`);
      }, { busyText: 'Adding…' })) : null);
}

const VERDICTS = {
  allow: 'Allowed: no rule matches, the request would be forwarded unchanged.',
  block: 'Blocked: the gateway would refuse this request (403 policy_violation).',
  redact: 'Redacted: the request would be forwarded with the matches replaced.',
  flag: 'Flagged: the request would be forwarded unchanged and the violations recorded.',
};

/**
 * The "Try it" box: a prompt checked against the rules by the API's dry run (`…/evaluate`),
 * which records nothing. Shows the verdict, each matched rule with its masked matches, and the
 * text as the provider would get it.
 */
function tryPolicies(base, rows) {
  const out = h('div', { id: 'policy-verdict' });
  const enabled = rows.filter((p) => p.enabled).length;
  return h('section', { class: 'panel', 'aria-labelledby': 'try-policies' },
    h('h2', { id: 'try-policies' }, 'Try it'),
    h('p', { class: 'muted' }, `Checks a prompt against the ${enabled} enabled rule${enabled === 1 ? '' : 's'} as the gateway would, without calling a provider or recording anything.`),
    form([
      field('Prompt', 'text', { tag: 'textarea', attrs: { rows: 4, required: true, maxlength: 65536, spellcheck: 'false' } }),
      field('Model', 'model', { hint: 'Optional: for model allowlist and denylist rules.', attrs: { maxlength: 200 } }),
    ], 'Check prompt', async (v) => {
      out.replaceChildren();
      const body = { text: v.text };
      if (v.model && v.model.trim()) body.model = v.model.trim();
      const r = await api('POST', `${base}/evaluate`, body, 'tenant');
      out.replaceChildren(verdict(r));
      return null;
    }, { busyText: 'Checking…' }),
    out);
}

function verdict(r) {
  return h('div', { class: `verdict ${r.action}`, role: 'status' },
    h('p', {}, h('span', { class: `badge verdict-${r.action}` }, r.action), ' ', VERDICTS[r.action] || ''),
    r.matched.length ? table([
      { label: 'Rule', cell: (m) => m.name },
      { label: 'Type', cell: (m) => m.type },
      { label: 'Action', cell: (m) => m.action },
      { label: 'Severity', cell: (m) => m.severity },
      { label: 'Matches', cell: (m) => m.matches.map((x) => h('code', { class: 'match' }, `${x.type}: ${x.excerpt}`)) },
    ], r.matched) : null,
    r.redacted_text != null ? h('div', { class: 'field' },
      h('strong', {}, 'Sent to the provider as'),
      h('pre', { class: 'redacted' }, r.redacted_text)) : null);
}

/** A cursor-paged list: each "Older" press appends the next page's rows. */
async function pagedTable(out, path, key, columns, empty) {
  const rows = [];
  // The next page by cursor, or by offset for a list without one.
  const load = async (next) => {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', next ? `${path}${sep}${next}` : path, undefined, 'tenant');
    rows.push(...(page[key] || []));
    const after = page.next_cursor ? `cursor=${encodeURIComponent(page.next_cursor)}` : page.has_more ? `offset=${rows.length}` : null;
    const more = after ? actionButton('Older entries', () => load(after)) : null;
    out.replaceChildren(...[table(columns, rows, empty), more].filter(Boolean));
  };
  await load(null);
}

export async function logs(main, org, t) {
  const base = `/v1/organizations/${org.id}/analytics`;
  const logOut = h('div', {});
  const violationsOut = h('div', {});
  const filters = h('section', { class: 'panel' }, form([
    h('div', { class: 'row' },
      field('Model', 'model', {}),
      field('Provider', 'provider', {}),
      field('Status', 'status', { type: 'number', attrs: { min: 100, max: 599 } })),
  ], 'Filter', async (v) => {
    const q = new URLSearchParams({ limit: '50' });
    for (const k of ['model', 'provider', 'status']) if (v[k]) q.set(k, v[k]);
    await pagedTable(logOut, `${base}/logs?${q}`, 'logs', logColumns, 'No requests match.');
  }));
  const logColumns = [
    { label: 'When', cell: (l) => when(l.created_at) },
    { label: 'Model', cell: (l) => l.model },
    { label: 'Provider', cell: (l) => l.provider },
    { label: 'Status', cell: (l) => String(l.status) },
    { label: 'Latency', cell: (l) => `${l.latency_ms} ms` },
    { label: 'Tokens', cell: (l) => `${l.prompt_tokens} + ${l.completion_tokens}` },
    { label: 'Cost', cell: (l) => `$${Number(l.cost_usd).toFixed(6)}` },
    { label: 'Key', cell: (l) => h('span', { class: 'mono' }, l.key_id) },
  ];
  main.replaceChildren(
    h('h1', {}, `Requests — ${t.env}`),
    filters,
    h('section', { class: 'panel' }, h('h2', {}, 'Usage log'), logOut),
    h('section', { class: 'panel' }, h('h2', {}, 'Policy violations'), violationsOut));
  await Promise.all([
    pagedTable(logOut, `${base}/logs?limit=50`, 'logs', logColumns, `No ${t.env} requests yet.`),
    pagedTable(violationsOut, `${base}/violations?limit=50`, 'violations', [
      { label: 'When', cell: (x) => when(x.created_at) },
      { label: 'Rule', cell: (x) => x.policy_name },
      { label: 'Type', cell: (x) => x.type },
      { label: 'Action', cell: (x) => x.action },
      { label: 'Stage', cell: (x) => x.stage },
      { label: 'Model', cell: (x) => x.model },
      { label: 'Matches', cell: (x) => h('code', {}, JSON.stringify(x.matches)) },
    ], 'No violations.').catch((err) => violationsOut.replaceChildren(errorBox(err))),
  ]);
}
