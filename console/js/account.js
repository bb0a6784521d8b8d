// The signed-in person's own page: profile name, password change, two-step verification (TOTP:
// enrol by scanning the QR code of its otpauth:// link, or with the secret or the link; recovery
// codes shown once; turn off with a code)
// and the sessions of the account (end any but this one).

import { api, refreshUser, currentUser } from './api.js';
import { h, form, field, notice, actionButton, when, table, copy } from './ui.js';
import qrcode from '/console/vendor/qrcode-generator-2.0.4/qrcode.mjs';

const SVG = 'http://www.w3.org/2000/svg';

/**
 * `text` as a QR code: an SVG (one path of dark modules, a 4-module quiet zone), built as DOM
 * nodes; the library only computes the modules.
 */
export function qrSvg(text, label) {
  const qr = qrcode(0, 'M');
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const size = n + 8;
  let d = '';
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) if (qr.isDark(r, c)) d += `M${c + 4} ${r + 4}h1v1h-1z`;
  }
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${size} ${size}`);
  svg.setAttribute('class', 'qr');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('shape-rendering', 'crispEdges');
  const bg = document.createElementNS(SVG, 'rect');
  bg.setAttribute('width', String(size));
  bg.setAttribute('height', String(size));
  bg.setAttribute('fill', '#fff');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', d);
  path.setAttribute('fill', '#000');
  svg.append(bg, path);
  return svg;
}

export async function account(main, message = null) {
  const user = await refreshUser();
  const top = h('div', {}, message ? notice(message) : null);
  const reload = (msg) => account(main, msg);
  const sessions = await api('GET', '/v1/me/sessions?limit=100');

  const mfa = h('section', { class: 'panel', 'aria-label': 'Two-step verification' },
    h('h2', {}, 'Two-step verification'),
    user.mfa_enabled
      ? [h('p', {}, 'On: every sign-in asks for a code from your authenticator app (or a recovery code).'),
        form([field('Code from your app', 'code', { attrs: { required: true, autocomplete: 'one-time-code' } })],
          'Turn off', async (v) => {
            await api('DELETE', '/v1/me/mfa', { code: v.code.trim() });
            await reload('Two-step verification is off.');
          }, { busyText: 'Turning off…' })]
      : [h('p', {}, 'Off. Turn it on to ask for a code from an authenticator app at every sign-in.'),
        h('div', { class: 'row buttons' }, actionButton('Set up an authenticator app', () => enrol(mfa, reload), { cls: '', errorTarget: top }))]);

  main.replaceChildren(
    h('h1', {}, 'Your account'),
    top,
    h('section', { class: 'panel' },
      h('h2', {}, 'Profile'),
      h('p', {}, h('span', { class: 'muted' }, 'Email: '), user.email, user.email_verified ? '' : ' (not verified)'),
      form([field('Your name', 'name', { value: user.name || '', attrs: { maxlength: 200, autocomplete: 'name' } })],
        'Save', async (v) => {
          await api('PATCH', '/v1/me', { name: v.name });
          await reload('Your name is saved.');
        }, { busyText: 'Saving…' })),
    h('section', { class: 'panel' },
      h('h2', {}, 'Password'),
      form([
        field('Current password', 'current_password', { type: 'password', attrs: { required: true, autocomplete: 'current-password' } }),
        field('New password', 'new_password', { type: 'password', attrs: { required: true, autocomplete: 'new-password', minlength: 8 } }),
      ], 'Change password', async (v, f) => {
        await api('PUT', '/v1/auth/password', { current_password: v.current_password, new_password: v.new_password });
        f.reset();
        return notice('Your password is changed; your other sessions have ended.');
      }, { busyText: 'Saving…' })),
    mfa,
    h('section', { class: 'panel' },
      h('h2', {}, 'Sessions'),
      table([
        { label: 'Device', cell: (s) => [s.device || 'unknown', s.current ? h('span', { class: 'badge active' }, 'this one') : null] },
        { label: 'IP address', cell: (s) => s.ip_address || '—' },
        { label: 'Started', cell: (s) => when(s.created_at) },
        { label: 'Last seen', cell: (s) => when(s.last_seen_at) },
        { label: '', cls: 'actions', cell: (s) => (s.current ? null : actionButton('End', async () => {
          await api('DELETE', `/v1/me/sessions/${s.id}`);
          await reload('The session has ended.');
        }, { cls: 'danger small', errorTarget: top, label: `End the session started ${when(s.created_at)}` })) },
      ], sessions.sessions || [])));
  if (currentUser() && !currentUser().email_verified) top.append(h('p', { class: 'muted' }, 'Your email is not verified yet: open the link in the verification email.'));
}

/**
 * Enrolment: the QR code of the otpauth:// link (to scan), the secret beside it (to type in) and
 * the link, then a code to confirm.
 */
async function enrol(panel, reload) {
  const e = await api('POST', '/v1/me/mfa/totp', {});
  const secret = h('code', { id: 'totp-secret' }, e.secret);
  panel.replaceChildren(
    h('h2', {}, 'Set up an authenticator app'),
    h('p', {}, 'Scan this QR code with your authenticator app, or add an account with the secret beside it (or open the link on the phone that has the app), then enter the 6-digit code it shows.'),
    h('div', { class: 'secret totp' },
      h('figure', { class: 'qr', id: 'totp-qr' }, qrSvg(e.otpauth_uri, 'QR code of the authenticator set-up link')),
      h('div', { class: 'totp-text' },
        h('strong', {}, 'Secret'),
        secret,
        h('div', { class: 'row buttons' },
          h('button', { type: 'button', class: 'secondary', onclick: () => copy(e.secret, secret) }, 'Copy secret'),
          h('a', { href: e.otpauth_uri }, 'Open in authenticator app')))),
    form([field('Code from your app', 'code', { attrs: { required: true, inputmode: 'numeric', autocomplete: 'one-time-code' } })],
      'Turn on', async (v) => {
        const r = await api('POST', '/v1/me/mfa/totp/verify', { code: v.code.trim() });
        const codes = h('code', { id: 'recovery-codes' }, r.recovery_codes.join('\n'));
        panel.replaceChildren(
          h('h2', {}, 'Two-step verification is on'),
          h('div', { class: 'secret' },
            h('strong', {}, 'Your recovery codes'),
            h('span', {}, 'Each signs you in once if you lose your phone. Keep them somewhere safe: they are shown only now.'),
            codes,
            h('div', { class: 'row buttons' },
              h('button', { type: 'button', onclick: () => copy(r.recovery_codes.join('\n'), codes) }, 'Copy codes'),
              h('button', { type: 'button', class: 'secondary', onclick: () => reload('Two-step verification is on.') }, 'I have saved them'))));
        panel.querySelector('button').focus();
      }, { busyText: 'Checking…' }));
  panel.querySelector('input').focus();
}
