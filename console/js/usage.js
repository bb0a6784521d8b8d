// Usage and analytics of the environment: totals, charts over time (requests and errors,
// tokens, cost, latency p50/p95/p99; uPlot, vendored) and the breakdowns by model, provider and
// key, from `…/analytics/stats`.

import uPlot from '../vendor/uplot-1.6.32/uPlot.esm.js';
import { api } from './api.js';
import { h, table } from './ui.js';

const RANGES = [
  { value: '24h', label: 'Last 24 hours', hours: 24, step: 'hour' },
  { value: '7d', label: 'Last 7 days', hours: 24 * 7, step: 'hour' },
  { value: '30d', label: 'Last 30 days', hours: 24 * 30, step: 'day' },
];

const number = (n) => Number(n || 0).toLocaleString();
const money = (n) => {
  const v = Number(n || 0);
  if (v === 0) return '$0';
  return v < 0.01 ? `$${v.toPrecision(2)}` : `$${v.toFixed(2)}`;
};

/** Every bucket of the window, those without traffic as zeros (the API lists only non-empty). */
function buckets(series, start, end, step) {
  const ms = step === 'hour' ? 3600e3 : 86400e3;
  const floor = (t) => Math.floor(t / ms) * ms;
  const byTime = new Map(series.map((s) => [floor(Date.parse(step === 'day' ? `${s.group}T00:00:00Z` : s.group)), s]));
  const out = [];
  for (let t = floor(Date.parse(start)); t < Date.parse(end); t += ms) out.push([t / 1000, byTime.get(t)]);
  return out;
}

function chart(container, title, xs, lines, width) {
  const box = h('figure', { class: 'chart' }, h('figcaption', {}, title));
  container.append(box);
  const colors = ['#2f5bd3', '#b42318', '#067647', '#b54708'];
  const opts = {
    width, height: 200,
    series: [{}, ...lines.map((l, i) => ({ label: l.label, stroke: colors[i], width: 2, value: (u, v) => (v == null ? '—' : l.fmt ? l.fmt(v) : number(v)) }))],
    axes: [{}, { size: lines[0].fmt ? 80 : 60, values: (u, vals) => vals.map((v) => (lines[0].fmt ? lines[0].fmt(v) : number(v))) }],
    scales: { x: { time: true } },
    legend: { live: true },
  };
  return new uPlot(opts, [xs, ...lines.map((l) => l.data)], box);
}

export async function usage(main, org, t) {
  const base = `/v1/organizations/${org.id}/analytics/stats`;
  const out = h('div', {});
  const select = h('select', { id: 'usage-range' }, RANGES.map((r) => h('option', { value: r.value }, r.label)));
  main.replaceChildren(
    h('h1', {}, `Usage — ${t.env}`),
    h('div', { class: 'row buttons' }, h('label', { for: 'usage-range' }, 'Period'), select),
    out);
  const plots = [];
  const load = async () => {
    plots.splice(0).forEach((p) => p.destroy());
    const range = RANGES.find((r) => r.value === select.value);
    const end = new Date();
    const start = new Date(end.getTime() - range.hours * 3600e3);
    const q = (by) => `${base}?start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}${by ? `&group_by=${by}` : ''}`;
    out.replaceChildren(h('p', { class: 'muted', role: 'status' }, 'Loading…'));
    const [time, byModel, byProvider, byKey] = await Promise.all(
      [range.step, 'model', 'provider', 'key'].map((by) => api('GET', q(by), undefined, 'tenant')));
    // Key names for the breakdown by key (ids for a caller who may not list keys).
    const names = new Map();
    try {
      const keys = await api('GET', `/v1/organizations/${org.id}/api-keys?limit=100`, undefined, 'tenant');
      for (const k of keys.api_keys || []) names.set(k.id, k.name);
    } catch { /* ids then */ }
    const total = time.totals || {};
    const lat = total.latency_ms || {};
    const cards = h('div', { class: 'stats' },
      [['Requests', number(total.requests)], ['Errors', number(total.errors)], ['Tokens', number(total.total_tokens)],
        ['Cost', money(total.cost_usd)], ['Latency p50', `${lat.p50 ?? '—'} ms`], ['p95', `${lat.p95 ?? '—'} ms`], ['p99', `${lat.p99 ?? '—'} ms`]]
        .map(([k, v]) => h('div', { class: 'stat' }, h('span', { class: 'muted' }, k), h('strong', {}, v))));
    const charts = h('div', { class: 'charts' });
    const groupTable = (title, res, label) => h('section', { class: 'panel' }, h('h2', {}, title), table([
      { label, cell: (s) => (label === 'Key' && names.has(s.group) ? `${names.get(s.group)} ` : '') || (s.group ? h('span', { class: label === 'Key' ? 'mono' : '' }, s.group) : h('span', { class: 'muted' }, 'none (refused before a provider)')) },
      { label: 'Requests', cell: (s) => number(s.requests) },
      { label: 'Errors', cell: (s) => number(s.errors) },
      { label: 'Tokens', cell: (s) => number(s.total_tokens) },
      { label: 'Cost', cell: (s) => money(s.cost_usd) },
      { label: 'p50 / p95 / p99', cell: (s) => `${s.latency_ms.p50} / ${s.latency_ms.p95} / ${s.latency_ms.p99} ms` },
    ], res.series || [], 'No traffic in this period.'));
    out.replaceChildren(
      h('section', { class: 'panel' }, cards),
      h('section', { class: 'panel' }, h('h2', {}, 'Over time'), charts),
      groupTable('By model', byModel, 'Model'),
      groupTable('By provider', byProvider, 'Provider'),
      groupTable('By key', byKey, 'Key'));
    const rows = buckets(time.series || [], time.start, time.end, range.step);
    const xs = rows.map(([x]) => x);
    const col = (f) => rows.map(([, s]) => (s ? f(s) : 0));
    const lcol = (f) => rows.map(([, s]) => (s && s.requests ? f(s) : null));
    const width = Math.max(260, Math.min(charts.clientWidth || 600, 1040));
    plots.push(
      chart(charts, 'Requests and errors', xs, [{ label: 'requests', data: col((s) => s.requests) }, { label: 'errors', data: col((s) => s.errors) }], width),
      chart(charts, 'Tokens', xs, [{ label: 'prompt', data: col((s) => s.prompt_tokens) }, { label: 'completion', data: col((s) => s.completion_tokens) }], width),
      chart(charts, 'Cost (USD)', xs, [{ label: 'cost', data: col((s) => s.cost_usd), fmt: money }], width),
      chart(charts, 'Latency (ms)', xs, [
        { label: 'p50', data: lcol((s) => s.latency_ms.p50) }, { label: 'p95', data: lcol((s) => s.latency_ms.p95) }, { label: 'p99', data: lcol((s) => s.latency_ms.p99) }], width));
  };
  select.addEventListener('change', () => load().catch((err) => out.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message))));
  await load();
}
