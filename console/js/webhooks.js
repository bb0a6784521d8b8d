// An organization's webhook endpoints (of the scoped token's environment): create (the signing
// secret shown once), send a test event, rotate the secret, enable/disable, delete, and each
// endpoint's delivery log with a retry button.

import { api } from './api.js';
import { h, form, field, notice, actionButton, badge, when, table, secretPanel } from './ui.js';

/** An endpoint's signing secret, shown once. */
function hookSecret(title, secret, onDone) {
  return secretPanel({
    title, secret, region: 'New signing secret', copyText: 'Copy secret', onDone,
    note: 'Copy it now: it is shown only this once. Receivers verify signatures with it (Standard Webhooks).',
  });
}

export async function webhooks(main, org, t, top = null) {
  const base = `/v1/organizations/${org.id}/webhooks`;
  const errors = h('div', {}, top);
  const detail = h('div', {});
  const page = await api('GET', `${base}?limit=100`, undefined, 'tenant');
  const reload = (node) => webhooks(main, org, t, node);
  const rows = page.webhooks || [];
  const done = () => errors.replaceChildren();

  const deliveries = async (w) => {
    const out = h('div', {});
    const load = async () => {
      const d = await api('GET', `${base}/${w.id}/deliveries?limit=50`, undefined, 'tenant');
      out.replaceChildren(table([
        { label: 'When', cell: (x) => when(x.created_at) },
        { label: 'Event', cell: (x) => h('span', { class: 'mono' }, x.event_type) },
        { label: 'Status', cell: (x) => badge(x.status) },
        { label: 'Attempt', cell: (x) => String(x.attempt) },
        { label: 'Answer', cell: (x) => (x.response_status ? `HTTP ${x.response_status}` : x.error || '—') },
        { label: 'Latency', cell: (x) => (x.latency_ms == null ? '—' : `${x.latency_ms} ms`) },
        { label: '', cls: 'actions', cell: (x) => (x.status !== 'failed' ? null : actionButton('Retry', async () => {
          await api('POST', `${base}/${w.id}/deliveries/${x.id}/retry`, undefined, 'tenant');
          await load();
        }, { errorTarget: out, label: `Retry delivery ${x.id}` })) },
      ], d.deliveries || [], 'No deliveries yet.'));
    };
    detail.replaceChildren(h('section', { class: 'panel', 'aria-label': `Deliveries to ${w.url}` },
      h('h2', {}, `Deliveries to ${w.url}`),
      h('div', { class: 'row buttons' },
        actionButton('Refresh', load, { errorTarget: out }),
        actionButton('Close', async () => detail.replaceChildren())),
      out));
    await load();
    detail.querySelector('button').focus();
  };

  main.replaceChildren(
    h('h1', {}, `Webhooks — ${t.env}`),
    errors,
    h('section', { class: 'panel' },
      h('h2', {}, `Endpoints (${rows.length})`),
      table([
        { label: 'URL', cell: (w) => h('span', { class: 'mono' }, w.url) },
        { label: 'Events', cell: (w) => w.events.join(', ') },
        { label: 'Status', cell: (w) => [badge(w.enabled ? 'active' : 'disabled'), w.disabled_reason ? h('div', { class: 'muted' }, w.disabled_reason) : null] },
        { label: 'Created', cell: (w) => when(w.created_at) },
        { label: '', cls: 'actions', cell: (w) => [
          actionButton('Deliveries', () => deliveries(w), { errorTarget: errors, label: `Deliveries to ${w.url}` }),
          actionButton('Send test', async () => {
            await api('POST', `${base}/${w.id}/test`, undefined, 'tenant');
            errors.replaceChildren(notice(`A webhook.test event is on its way to ${w.url}.`));
          }, { errorTarget: errors, label: `Send a test event to ${w.url}` }),
          actionButton('Rotate secret', async () => {
            if (!confirm('Rotate the signing secret? The previous one keeps signing for 24 hours.')) return;
            const r = await api('POST', `${base}/${w.id}/rotate-secret`, undefined, 'tenant');
            await reload(hookSecret(`New secret of ${w.url}`, r.secret, done));
          }, { errorTarget: errors, label: `Rotate the secret of ${w.url}` }),
          actionButton(w.enabled ? 'Disable' : 'Enable', async () => {
            await api('PATCH', `${base}/${w.id}`, { enabled: !w.enabled }, 'tenant');
            await reload(notice(`${w.url} is ${w.enabled ? 'disabled' : 'enabled'}.`));
          }, { errorTarget: errors, label: `${w.enabled ? 'Disable' : 'Enable'} ${w.url}` }),
          actionButton('Delete', async () => {
            if (!confirm(`Delete the endpoint ${w.url}?`)) return;
            await api('DELETE', `${base}/${w.id}`, undefined, 'tenant');
            await reload(notice(`${w.url} is deleted.`));
          }, { cls: 'danger small', errorTarget: errors, label: `Delete ${w.url}` }),
        ] },
      ], rows, `No ${t.env} endpoints yet.`)),
    detail,
    h('section', { class: 'panel' },
      h('h2', {}, 'Add an endpoint'),
      form([
        field('Endpoint URL', 'url', { type: 'url', hint: 'A public https:// address that answers 2xx.', attrs: { required: true } }),
        field('Events', 'events', { value: '*', hint: 'Comma-separated event types (docs/events.md), or * for every event.' }),
        field('Description', 'description', { attrs: { maxlength: 500 } }),
      ], `Add ${t.env} endpoint`, async (v) => {
        const events = (v.events || '').split(',').map((s) => s.trim()).filter(Boolean);
        const created = await api('POST', base, { url: v.url, events, description: v.description, environment: t.env }, 'tenant');
        await reload(hookSecret(`Signing secret of ${created.url}`, created.secret, done));
        main.querySelector('#new-secret').scrollIntoView();
      }, { busyText: 'Adding…' })));
}
