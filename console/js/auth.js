// The pages before signing in, and the pages our emails link to: sign in (password, MFA step,
// emailed one-time code), register, verify email (?email=&code=), forgot and reset password
// (?token=), accept an invitation (?token=).

import { api, startSession, signedIn, currentUser, refreshUser } from './api.js';
import { h, mount, go, link, form, field, notice, params } from './ui.js';

function card(title, ...body) {
  return h('div', { class: 'auth' },
    h('div', { class: 'brand' }, 'Gatehouse'),
    h('main', { id: 'main', class: 'card' }, h('h1', {}, title), body));
}

/** Where to go once signed in: `?next=` when it is a path of this application. */
function next() {
  const n = params().get('next');
  // Only a path of this application: not `//host` nor `/\host` (which browsers read as `//host`).
  return n && n.startsWith('/') && !n.startsWith('//') && !n.includes('\\') ? n : '/orgs';
}

/** Finishes a sign-in answer: a session, or the MFA step. */
function signedInOr(root, answer, email) {
  if (answer.mfa_required) return mfaStep(root, answer.mfa_token, email);
  startSession(answer);
  go(next(), true);
}

function mfaStep(root, mfaToken) {
  mount(root, card('Two-step verification',
    h('p', {}, 'Enter the 6-digit code from your authenticator app, or one of your recovery codes.'),
    form([
      field('Code', 'code', { attrs: { required: true, autocomplete: 'one-time-code', inputmode: 'text', autofocus: true } }),
    ], 'Verify', async (v) => {
      const answer = await api('POST', '/v1/auth/mfa/verify', { mfa_token: mfaToken, code: v.code.trim() }, 'none');
      startSession(answer);
      go(next(), true);
    }),
    h('div', { class: 'links' }, link('/login', 'Start over'))));
  root.querySelector('input').focus();
}

export function login(root) {
  if (signedIn()) return go(next(), true);
  mount(root, card('Sign in',
    form([
      field('Email', 'email', { type: 'email', attrs: { required: true, autocomplete: 'username', autofocus: true } }),
      field('Password', 'password', { type: 'password', attrs: { required: true, autocomplete: 'current-password' } }),
    ], 'Sign in', async (v) => {
      const answer = await api('POST', '/v1/auth/login', { email: v.email, password: v.password }, 'none');
      signedInOr(root, answer, v.email);
    }, { busyText: 'Signing in…' }),
    h('div', { class: 'links' },
      link('/login?code=1', 'Email me a sign-in code'),
      link('/forgot-password', 'Forgot password?'),
      link('/register', 'Create an account'))));
  if (params().get('code')) codeLogin(root);
}

/** Passwordless: a code by email, then the code (and the MFA step if the account has it). */
function codeLogin(root) {
  mount(root, card('Sign in with a code',
    form([
      field('Email', 'email', { type: 'email', attrs: { required: true, autocomplete: 'username', autofocus: true } }),
    ], 'Email me a code', async (v) => {
      await api('POST', '/v1/auth/otp/request', { email: v.email }, 'none');
      mount(root, card('Enter your code',
        h('p', {}, `If an account exists for ${v.email}, a 6-digit code is on its way.`),
        form([
          field('Code', 'code', { attrs: { required: true, autocomplete: 'one-time-code', inputmode: 'numeric', autofocus: true } }),
        ], 'Sign in', async (c) => {
          const answer = await api('POST', '/v1/auth/otp/verify', { email: v.email, code: c.code.trim() }, 'none');
          signedInOr(root, answer, v.email);
        }),
        h('div', { class: 'links' }, link('/login', 'Use a password instead'))));
      root.querySelector('input').focus();
    }, { busyText: 'Sending…' }),
    h('div', { class: 'links' }, link('/login', 'Use a password instead'))));
}

function registerForm(root, invitationToken) {
  return form([
    field('Name', 'name', { attrs: { autocomplete: 'name', maxlength: 200 } }),
    field('Email', 'email', { type: 'email', attrs: { required: true, autocomplete: 'email' } }),
    field('Password', 'password', { type: 'password', hint: 'At least 8 characters; not a common password, nor one containing your email.', attrs: { required: true, autocomplete: 'new-password', minlength: 8 } }),
  ], 'Create account', async (v) => {
    const body = { email: v.email, password: v.password, name: v.name };
    if (invitationToken) body.invitation_token = invitationToken;
    const answer = await api('POST', '/v1/auth/register', body, 'none');
    startSession(answer);
    if (answer.membership) return go(`/orgs/${answer.membership.organization_id}/members`, true);
    if (answer.user && !answer.user.email_verified) return go(`/verify-email?email=${encodeURIComponent(answer.user.email)}`, true);
    go('/orgs', true);
  }, { busyText: 'Creating…' });
}

export function register(root) {
  mount(root, card('Create your account',
    registerForm(root, params().get('invitation_token')),
    h('div', { class: 'links' }, h('span', {}, 'Already have an account?'), link('/login', 'Sign in'))));
}

export function verifyEmail(root) {
  const p = params();
  mount(root, card('Verify your email',
    h('p', {}, 'We emailed you a 6-digit code. Enter it here, or open the link in the email.'),
    form([
      field('Email', 'email', { type: 'email', value: p.get('email') || (currentUser() && currentUser().email) || '', attrs: { required: true, autocomplete: 'email' } }),
      field('Code', 'code', { value: p.get('code') || '', attrs: { required: true, inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6}' } }),
    ], 'Verify email', async (v) => {
      await api('POST', '/v1/auth/verify-email', { email: v.email, code: v.code.trim() }, 'none');
      if (signedIn()) await refreshUser().catch(() => null);
      mount(root, card('Email verified',
        notice(`${v.email} is verified.`),
        h('div', { class: 'links' }, signedIn() ? link('/orgs', 'Continue to your organizations') : link('/login', 'Sign in'))));
      root.querySelector('a').focus();
    }, { busyText: 'Verifying…' }),
    h('div', { class: 'links' }, signedIn() ? link('/orgs', 'Later') : link('/login', 'Sign in'))));
}

export function forgotPassword(root) {
  mount(root, card('Reset your password',
    form([
      field('Email', 'email', { type: 'email', attrs: { required: true, autocomplete: 'email', autofocus: true } }),
    ], 'Email me a reset link', async (v) => {
      const answer = await api('POST', '/v1/auth/forgot-password', { email: v.email }, 'none');
      return notice(answer && answer.message ? answer.message : 'If an account exists for this email, a reset link has been sent.');
    }, { busyText: 'Sending…' }),
    h('div', { class: 'links' }, link('/login', 'Back to sign in'))));
}

export function resetPassword(root) {
  const token = params().get('token') || '';
  mount(root, card('Choose a new password',
    form([
      field('Reset token', 'token', { value: token, hint: 'From the email; filled in when you open its link.', attrs: { required: true, autocomplete: 'off' } }),
      field('New password', 'new_password', { type: 'password', attrs: { required: true, autocomplete: 'new-password', minlength: 8, autofocus: true } }),
    ], 'Set password', async (v) => {
      await api('POST', '/v1/auth/reset-password', { token: v.token.trim(), new_password: v.new_password }, 'none');
      mount(root, card('Password changed',
        notice('Your password is changed and every session of your account has ended.'),
        h('div', { class: 'links' }, link('/login', 'Sign in'))));
    }, { busyText: 'Saving…' })));
}

export function acceptInvitation(root) {
  const token = params().get('token') || '';
  if (!token) {
    return mount(root, card('Accept an invitation', h('p', {}, 'This link has no invitation token. Open the link from your invitation email.')));
  }
  if (signedIn()) {
    const user = currentUser();
    return mount(root, card('Accept the invitation',
      h('p', {}, `You are signed in as ${user ? user.email : 'yourself'}. The invitation must have been sent to this address.`),
      form([], 'Accept invitation', async () => {
        const m = await api('POST', '/v1/invitations/accept', { token });
        go(`/orgs/${m.organization_id}/members`, true);
      }, { busyText: 'Joining…' })));
  }
  const here = `/accept-invitation?token=${encodeURIComponent(token)}`;
  mount(root, card('Join the organization',
    h('p', {}, 'New here? Create your account with the address the invitation was sent to; you join the organization at once.'),
    registerForm(root, token),
    h('div', { class: 'links' }, h('span', {}, 'Already have an account?'), link(`/login?next=${encodeURIComponent(here)}`, 'Sign in to accept'))));
}
