// The API client: the session's tokens (sessionStorage: gone when the tab closes), one request
// function that refreshes an expired access token once through the API's refresh flow, and the
// API's error envelope as an ApiError carrying `error.message` and its field details.

const KEY = 'gatehouse.session';

/** {access, refresh, user, tenant: {org, env, token, role}|null} or null. */
let session = load();

function load() {
  try { return JSON.parse(sessionStorage.getItem(KEY)); } catch { return null; }
}
function save() {
  if (session) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `The request failed (HTTP ${status})`);
    this.status = status;
    this.code = e.code || 'error';
    this.details = e.details;
  }
}

export function currentUser() { return session && session.user; }
export function signedIn() { return !!(session && session.refresh); }
export function tenant() { return session && session.tenant; }

/** Keeps the tokens (and user) of a sign-in answer: register, login, MFA, emailed code. */
export function startSession(answer) {
  session = { access: answer.access_token, refresh: answer.refresh_token, user: answer.user, tenant: null };
  save();
}

export function endSession() { session = null; save(); }

async function send(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  if (text) { try { json = JSON.parse(text); } catch { json = null; } }
  return { res, json };
}

let refreshing = null;

/** One refresh at a time: the refresh token is single use, a second use would end the session. */
function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const { res, json } = await send('POST', '/v1/auth/login', { grant_type: 'refresh_token', refresh_token: session.refresh });
      if (!res.ok) { endSession(); throw new ApiError(res.status, json); }
      const t = session.tenant;
      session.access = json.access_token;
      session.refresh = json.refresh_token;
      session.tenant = null;
      save();
      // A refresh answers an unscoped token: scope it again to the same organization (sent
      // directly: a refusal here must not start another refresh; the page then selects again).
      if (t) {
        const r = await send('POST', '/v1/auth/select-tenant', { organization_id: t.org, environment: t.env }, session.access);
        if (r.res.ok) {
          session.tenant = { ...t, token: r.json.access_token, role: r.json.role, id: r.json.organization_id };
          save();
        }
      }
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/**
 * Calls the API. `as`: 'user' (the session's token), 'tenant' (the organization-scoped token),
 * 'none'. A 401 on a signed-in call refreshes once and retries.
 */
export async function api(method, path, body, as = 'user') {
  const token = () => (as === 'none' || !session) ? null : (as === 'tenant' && session.tenant ? session.tenant.token : session.access);
  let { res, json } = await send(method, path, body, token());
  if (res.status === 401 && as !== 'none' && session && session.refresh) {
    await refresh();
    if (as === 'tenant' && !session.tenant) {
      // Not scoped again after the refresh (membership or environment changed): never fall
      // back to the unscoped token, which sees every environment.
      throw new ApiError(403, { error: { message: 'Your access to this organization has changed; reload the page.' } });
    }
    ({ res, json } = await send(method, path, body, token()));
  }
  if (!res.ok) {
    if (res.status === 401 && as !== 'none') endSession();
    throw new ApiError(res.status, json);
  }
  return json;
}

/** A token scoped to one organization and environment (`select-tenant`), kept for its pages. */
export async function selectTenant(org, env) {
  const json = await api('POST', '/v1/auth/select-tenant', { organization_id: org, environment: env });
  session.tenant = { org, env, token: json.access_token, role: json.role, id: json.organization_id };
  save();
  return session.tenant;
}

export async function signOut() {
  try { if (session) await send('POST', '/v1/auth/logout', undefined, session.access); } finally { endSession(); }
}

export async function refreshUser() {
  const me = await api('GET', '/v1/me');
  if (session) { session.user = me.user || me; save(); }
  return session && session.user;
}

/** Saves an export (CSV, NDJSON) the API streams, as a file. */
export async function download(path, filename) {
  const t = session && (session.tenant ? session.tenant.token : session.access);
  const res = await fetch(path, { headers: t ? { Authorization: `Bearer ${t}` } : {} });
  if (!res.ok) {
    let json = null;
    try { json = await res.json(); } catch { json = null; }
    throw new ApiError(res.status, json);
  }
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A chat completion through the gateway with an API key (the console's "Try it"). */
export async function gatewayChat(key, model, prompt) {
  const { res, json } = await send('POST', '/openai/v1/chat/completions',
    { model, messages: [{ role: 'user', content: prompt }] }, key);
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}
