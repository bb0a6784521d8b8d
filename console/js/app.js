// The console's router: one page per path (the server answers index.html on each of them).

import { signedIn, currentUser } from './api.js';
import { h, mount, setRouter, go, errorBox, link } from './ui.js';
import * as auth from './auth.js';
import { orgList, orgPage, accountPage, adminPage } from './org.js';

const root = document.getElementById('app');

const PUBLIC = {
  '/login': auth.login,
  '/register': auth.register,
  '/verify-email': auth.verifyEmail,
  '/forgot-password': auth.forgotPassword,
  '/reset-password': auth.resetPassword,
  '/accept-invitation': auth.acceptInvitation,
};

async function route() {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  try {
    if (PUBLIC[path]) return await PUBLIC[path](root);
    if (!signedIn()) {
      const here = location.pathname + location.search;
      return go(here === '/' ? '/login' : `/login?next=${encodeURIComponent(here)}`, true);
    }
    if (path === '/account') return await accountPage(root);
    const admin = path.match(/^\/admin(?:\/([^/]+))?$/);
    if (admin) return await adminPage(root, admin[1] || 'stats');
    if (path === '/' || path === '/orgs') return await orgList(root);
    const m = path.match(/^\/orgs\/([^/]+)(?:\/([^/]+))?$/);
    if (m) return await orgPage(root, decodeURIComponent(m[1]), m[2] || 'members');
    mount(root, h('main', { id: 'main', class: 'auth' }, h('h1', {}, 'Page not found'), link('/orgs', 'Your organizations')));
  } catch (err) {
    if (err && err.status === 401) return go('/login', true);
    const user = currentUser();
    mount(root, h('main', { id: 'main', class: 'auth' },
      h('h1', {}, 'Something went wrong'), errorBox(err),
      h('p', { class: 'links' }, link('/orgs', 'Your organizations'),
        user && user.is_platform_admin ? link('/admin/configs', 'Platform configuration') : null)));
  }
}

/** After a navigation inside the application, focus goes to the new page's heading. */
async function navigate() {
  await route();
  const heading = document.querySelector('#main h1');
  const active = document.activeElement;
  if (heading && (!active || active === document.body || !document.contains(active))) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

setRouter(navigate);
window.addEventListener('popstate', navigate);
route();
