// The dashboard's shell: the login form (the API key is kept in this tab's sessionStorage
// only) and the hash router, so every page has a URL to paste into a chat:
//   #/overview  #/events?uid=&type=  #/sessions?uid=&device=
//   #/messages?from=&to=&since=&until=  #/trace/<message id>

import { apiKey, setApiKey, tryKey, whenUnauthorized } from './api.js';
import { events, h, messages, overview, sessions, trace } from './pages.js';

const PAGES = { overview, events, sessions, messages, trace };

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const logout = document.getElementById('logout');
let cleanup = null;
let loggedIn = false;

function stopPage() {
  if (cleanup) cleanup();
  cleanup = null;
}

function route() {
  if (!loggedIn) return;
  stopPage();
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, qs = ''] = hash.split('?');
  const [name, ...args] = path.split('/');
  const page = PAGES[name] ? name : 'overview';
  for (const a of nav.querySelectorAll('a')) {
    a.classList.toggle('active', a.dataset.page === page || (page === 'trace' && a.dataset.page === 'messages'));
  }
  document.title = `herald · ${page}${args[0] ? ` ${decodeURIComponent(args[0])}` : ''}`;
  cleanup = PAGES[page](main, args, new URLSearchParams(qs)) || null;
}

function showLogin(msg) {
  stopPage();
  loggedIn = false;
  nav.hidden = true;
  logout.hidden = true;
  who.textContent = '';
  document.title = 'herald · log in';
  const input = h('input', { type: 'password', name: 'key', id: 'api-key', autocomplete: 'off', required: true, placeholder: 'API key' });
  const out = h('p', { class: 'error', id: 'login-error', role: 'alert' }, msg || '');
  main.replaceChildren(h('form', { class: 'login', id: 'login', onsubmit: async (ev) => {
    ev.preventDefault();
    const k = input.value.trim();
    const r = await tryKey(k).catch((e) => ({ ok: false, msg: `the server did not answer (${e.message})` }));
    if (!r.ok) {
      out.textContent = `Refused: ${r.msg || 'the API key was refused'}`;
      return;
    }
    setApiKey(k);
    enter(false);
  } },
  h('h1', {}, 'herald dashboard'),
  h('p', { class: 'muted' }, 'Give one of the server\'s API keys (api.keys). It is kept in this browser tab only, until the tab is closed.'),
  h('label', {}, 'API key', input),
  h('button', { type: 'submit' }, 'Log in'),
  out));
  input.focus();
}

function enter(dev) {
  loggedIn = true;
  nav.hidden = false;
  logout.hidden = dev;
  who.textContent = dev ? 'dev mode: no API key needed' : 'logged in with an API key';
  who.className = dev ? 'badge reconnecting' : 'badge live';
  route();
}

whenUnauthorized((msg) => {
  setApiKey('');
  showLogin(`Refused: ${msg}`);
});
logout.addEventListener('click', () => {
  setApiKey('');
  showLogin('');
});
window.addEventListener('hashchange', route);

(async () => {
  const k = apiKey();
  const r = await tryKey(k).catch(() => ({ ok: false, msg: 'the server did not answer' }));
  if (r.ok) {
    enter(!k);
  } else {
    if (k) setApiKey('');
    showLogin(k ? `Refused: ${r.msg || 'the API key was refused'}` : '');
  }
})();
