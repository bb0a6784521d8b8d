// An organization's settings (profile, IP allowlist with a lock-out warning), the roles table,
// and billing: usage against the plan's limits, the subscription, the plan catalogue.

import { api, download } from './api.js';
import { h, form, field, notice, errorBox, actionButton, badge, when, table } from './ui.js';

export async function settings(main, org, t, message = null) {
  const base = `/v1/organizations/${org.id}`;
  const canManage = ['admin', 'owner'].includes(t.role);
  const top = h('div', {}, message ? notice(message) : null);
  const reload = async (msg) => settings(main, await api('GET', base, undefined, 'tenant'), t, msg);
  const roles = await api('GET', '/v1/roles?limit=100', undefined, 'none');
  const allowlist = (org.settings && org.settings.ip_allowlist) || [];

  const save = async (body, force = false) => {
    await api('PATCH', `${base}${force ? '?force=true' : ''}`, body, 'tenant');
  };
  const allowStatus = h('div', {});
  const allowForm = form([
    field('Allowed addresses', 'ip_allowlist', {
      tag: 'textarea', value: allowlist.join('\n'),
      hint: 'One IP address or CIDR range per line; empty: every address. Requests from elsewhere are refused, yours included if it is not listed.',
    }),
  ], 'Save allowlist', async (v) => {
    allowStatus.replaceChildren();
    const list = (v.ip_allowlist || '').split('\n').map((s) => s.trim()).filter(Boolean);
    const body = { settings: { ip_allowlist: list } };
    try {
      await save(body);
    } catch (err) {
      const lockout = Array.isArray(err.details) && err.details.some((d) => d.field === 'settings.ip_allowlist' && /lock you out/.test(d.message || ''));
      if (!lockout) throw err;
      // The API refused to lock the caller out: say so, and offer to do it anyway.
      allowStatus.replaceChildren(errorBox(err), h('div', { class: 'row buttons' },
        actionButton('Save anyway and lock myself out', async () => {
          await save(body, true);
          await reload('The allowlist is saved.');
        }, { cls: 'danger', errorTarget: allowStatus })));
      return null;
    }
    await reload('The allowlist is saved.');
    return null;
  }, { busyText: 'Saving…' });

  main.replaceChildren(
    h('h1', {}, 'Settings'),
    top,
    h('section', { class: 'panel' },
      h('h2', {}, 'Organization'),
      h('p', { class: 'muted' }, `Slug: ${org.slug} · plan: ${org.plan} · created ${when(org.created_at)}`),
      canManage ? form([
        h('div', { class: 'row' },
          field('Organization name', 'name', { value: org.name, attrs: { required: true, maxlength: 100 } }),
          field('Website', 'website', { type: 'url', value: org.website || '' }),
          field('Time zone', 'timezone', { value: org.timezone || '', hint: 'An IANA name, e.g. Europe/Paris.' })),
        field('Description', 'description', { tag: 'textarea', value: org.description || '' }),
      ], 'Save', async (v) => {
        await save({ name: v.name, website: v.website, timezone: v.timezone, description: v.description });
        await reload('The organization is saved.');
      }, { busyText: 'Saving…' }) : h('p', {}, org.description || '')),
    canManage ? h('section', { class: 'panel' },
      h('h2', {}, 'IP allowlist'),
      allowForm, allowStatus) : null,
    h('section', { class: 'panel' },
      h('h2', {}, 'Roles'),
      h('p', { class: 'muted' }, 'Each role holds every permission of the roles below it.'),
      table([
        { label: 'Role', cell: (r) => h('strong', {}, r.name) },
        { label: 'What it is for', cell: (r) => r.description },
        { label: 'Permissions', cell: (r) => h('details', {}, h('summary', {}, `${r.permissions.length} permissions`), r.permissions.join(', ')) },
      ], roles.roles || [])));
}

const fmtLimit = (l) => (l == null ? 'unlimited' : Number(l).toLocaleString());
const price = (p) => (p.amount === 0 ? 'free' : `${(p.amount / 100).toFixed(2)} ${String(p.currency).toUpperCase()} / ${p.interval}`);

export async function billing(main, org, t, message = null) {
  const base = `/v1/organizations/${org.id}`;
  const top = h('div', {}, message ? notice(message) : null);
  const reload = (msg) => billing(main, org, t, msg);
  const [usage, plans, sub] = await Promise.all([
    api('GET', `${base}/usage`, undefined, 'tenant'),
    api('GET', '/v1/plans?limit=100'),
    api('GET', `${base}/subscription`, undefined, 'tenant').catch((err) => {
      if (err.status === 404) return null;
      throw err;
    }),
  ]);
  const canManage = ['admin', 'owner'].includes(t.role);
  // Invoices need admin (`billing:read`); a member below sees usage and the plan only.
  const invoices = canManage ? await api('GET', `${base}/invoices?limit=24`, undefined, 'tenant') : null;
  const money = (amount, currency) => `${(amount / 100).toFixed(2)} ${String(currency).toUpperCase()}`;
  const quantities = Object.entries(usage).filter(([, v]) => v && typeof v === 'object' && 'used' in v);
  const current = sub ? sub.plan : usage.plan;
  const choose = (p) => actionButton(sub ? 'Switch to this plan' : 'Subscribe', async () => {
    if (sub) await api('PATCH', `${base}/subscription`, { plan: p.id }, 'tenant');
    else await api('POST', `${base}/subscription`, { plan: p.id }, 'tenant');
    await reload(`The organization is on ${p.name} now.`);
  }, { errorTarget: top, label: `${sub ? 'Switch to' : 'Subscribe to'} ${p.name}` });

  main.replaceChildren(
    h('h1', {}, 'Billing'),
    top,
    h('section', { class: 'panel' },
      h('h2', {}, 'Usage this period'),
      h('p', { class: 'muted' }, `Plan ${usage.plan}, from ${when(usage.period && usage.period.start)} to ${when(usage.period && usage.period.end)}.`),
      table([
        { label: 'Quantity', cell: ([k]) => k.replace(/_/g, ' ') },
        { label: 'Used', cell: ([, v]) => Number(v.used).toLocaleString() },
        { label: 'Limit', cell: ([, v]) => fmtLimit(v.limit) },
        { label: 'Share', cell: ([, v]) => (v.limit ? h('progress', { max: v.limit, value: Math.min(v.used, v.limit), 'aria-label': `${v.used} of ${v.limit}` }) : '—') },
      ], quantities)),
    h('section', { class: 'panel' },
      h('h2', {}, 'Subscription'),
      sub ? [
        h('p', {}, 'Plan ', h('strong', {}, sub.plan), ' ', badge(sub.status),
          sub.cancel_at_period_end ? ' — ends at the end of this cycle' : ''),
        h('p', { class: 'muted' }, `Cycle ${when(sub.billing_cycle_start)} – ${when(sub.billing_cycle_end)}; ${(sub.amount / 100).toFixed(2)} ${String(sub.currency).toUpperCase()}; renews automatically: ${sub.auto_renew ? 'yes' : 'no'}.`),
        t.role === 'owner' && !sub.cancel_at_period_end && sub.status !== 'canceled' ? actionButton('Cancel at the end of the cycle', async () => {
          if (!confirm('Cancel the subscription? The plan stays until the end of the billing cycle.')) return;
          await api('DELETE', `${base}/subscription`, undefined, 'tenant');
          await reload('The subscription ends at the end of this cycle.');
        }, { cls: 'danger', errorTarget: top }) : null,
      ] : h('p', {}, `No subscription: the organization is on the default plan (${usage.plan}).`),
      invoices ? h('h3', {}, 'Invoices') : null,
      invoices && invoices.invoices.length ? table([
        { label: 'Invoice', cell: (i) => h('code', {}, i.id) },
        { label: 'Date', cell: (i) => when(i.date) },
        { label: 'Due', cell: (i) => when(i.due_date) },
        { label: 'Amount', cell: (i) => money(i.amount, i.currency) },
        { label: 'Status', cell: (i) => badge(i.status) },
        { label: '', cls: 'actions', cell: (i) => actionButton('PDF', () => download(`${base}/invoices/${i.id}/pdf`, `${i.id}.pdf`), { errorTarget: top, label: `Download ${i.id} as PDF` }) },
      ], invoices.invoices) : null,
      invoices && !invoices.invoices.length ? h('p', { class: 'muted' }, 'No invoices yet: the first is issued when this billing period closes.') : null),
    h('section', { class: 'panel' },
      h('h2', {}, 'Plans'),
      table([
        { label: 'Plan', cell: (p) => [h('strong', {}, p.name), p.id === current ? [' ', badge('active')] : null] },
        { label: 'Price', cell: price },
        { label: 'Limits', cell: (p) => Object.entries(p.limits || {}).map(([k, v]) => `${k.replace(/_/g, ' ')}: ${fmtLimit(v)}`).join(' · ') },
        { label: '', cls: 'actions', cell: (p) => (canManage && p.id !== current ? choose(p) : null) },
      ], plans.plans || [])));
}
