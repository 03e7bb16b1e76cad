// The dashboard's pages. Each page is render(main, args, query) -> cleanup function; every fact
// shown comes from the HTTP API (see docs/protocol.md), read with the operator's key.

import { api, ApiError, Unauthorized } from './api.js';
import { openFeed } from './feed.js';

/// How often the overview reads GET /v1/overview.
export const OVERVIEW_POLL_MS = 1000;
/// Samples kept per overview chart (two minutes at one a second).
const CHART_SAMPLES = 120;
/// How often the sessions page reads the sessions again.
const SESSIONS_POLL_MS = 2000;
/// Events the live events page keeps (in this tab's sessionStorage, across reloads).
const EVENTS_KEPT = 500;
/// Events read when the live events page opens with nothing kept.
const EVENTS_BACKLOG = 100;
/// How often an open trace page reads the trace again.
const TRACE_POLL_MS = 2000;
/// Sessions and messages listed at most.
const LIST_LIMIT = 200;
const PREVIEW_CHARS = 80;

// --- small helpers ------------------------------------------------------------------------

/// h('div', {class: 'x'}, child, 'text', …): an element; null/false children are skipped.
export function h(tag, attrs = {}, ...children) {
  const el = tag === 'svg' || tag === 'polyline' || tag === 'line'
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function pad(n, w = 2) {
  return String(n).padStart(w, '0');
}

/// `ms` as "2025-06-01 12:00:00.045 UTC" (as the CLI prints it), or "-".
export function utc(ms) {
  if (ms === null || ms === undefined) return '-';
  const d = new Date(Number(ms));
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)} UTC`;
}

/// A span of milliseconds, short: 850 ms, 2.5 s, 3m 05s, 2h 07m, 3d 04h (as the CLI).
export function span(ms) {
  ms = Math.max(0, Math.round(ms));
  const s = Math.floor(ms / 1000);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) {
    const t = Math.floor((ms % 1000) / 100);
    return t === 0 ? `${s} s` : `${s}.${t} s`;
  }
  if (ms < 3600000) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (ms < 86400000) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
}

function preview(body) {
  const text = JSON.stringify(body) ?? 'null';
  return text.length <= PREVIEW_CHARS ? text : `${text.slice(0, PREVIEW_CHARS)}… (${text.length} bytes)`;
}

const UNIT_MS = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000 };

/// `<n><unit>…` (units ms, s, m, h, d, w) in ms, or null if `s` is not of that form.
function parseDuration(s) {
  const re = /(\d+)([a-z]+)/y;
  let total = 0;
  while (re.lastIndex < s.length) {
    const m = re.exec(s);
    if (!m || !(m[2] in UNIT_MS)) return null;
    total += Number(m[1]) * UNIT_MS[m[2]];
  }
  return s.length ? total : null;
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.mmm]]][Z| UTC]`, always UTC, in ms; null if not of that form.
function parseUtc(text) {
  const s = text.replace(/( UTC|Z|z)$/, '');
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?)?$/.exec(s);
  if (!m) return null;
  const [y, mo, d, hh, mi, ss, frac] = m.slice(1);
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(hh || 0), Number(mi || 0), Number(ss || 0), Number((frac || '0').padEnd(3, '0')));
  const back = new Date(ms);
  // 2025-02-30 and 25:00 are not times.
  if (back.getUTCMonth() !== Number(mo) - 1 || back.getUTCDate() !== Number(d) || Number(hh || 0) > 23 || Number(mi || 0) > 59 || Number(ss || 0) > 59) return null;
  return ms;
}

/// A time as the CLI takes it (`herald messages --since`): `now`, a duration ago (30s, 15m,
/// 1h30m, 2d, 500ms, 1w), a UTC time (2025-06-01, 2025-06-01T12:00:00Z, or as printed here),
/// or ms since the epoch. Null when empty; throws with the accepted forms otherwise.
export function parseWhen(text, now = Date.now()) {
  const t = (text || '').trim();
  if (!t) return null;
  if (t.toLowerCase() === 'now') return now;
  if (/^\d+$/.test(t)) return Number(t);
  const ago = parseDuration(t);
  if (ago !== null) return Math.max(0, now - ago);
  const at = parseUtc(t);
  if (at !== null) return at;
  throw new Error(`${JSON.stringify(t)} is not a time: use a duration ago (30s, 15m, 1h, 2d, 1h30m), a UTC time (2025-06-01T12:00:00Z) or milliseconds since the epoch`);
}

function errorBox(e) {
  if (e instanceof Unauthorized) return null;
  const msg = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e.message || e);
  return h('p', { class: 'error', role: 'alert' }, msg);
}

function setQuery(page, q) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v) qs.set(k, v);
  const s = qs.toString();
  location.hash = `#/${page}${s ? `?${s}` : ''}`;
}

function field(label, name, value, placeholder) {
  return h('label', {}, label, h('input', { name, value: value || '', placeholder, autocomplete: 'off' }));
}

// --- overview -----------------------------------------------------------------------------

/// Fewest sample slots a chart is drawn over, so the first seconds do not fill its width.
const CHART_MIN_SLOTS = 12;

/// A line chart of `values` (null: no reading), newest at the right edge, scaled to its peak.
function sparkline(values) {
  const w = 240;
  const hgt = 48;
  const svg = h('svg', { viewBox: `0 0 ${w} ${hgt}`, width: '100%', height: hgt, preserveAspectRatio: 'none', class: 'spark' });
  svg.append(h('line', { x1: 0, y1: hgt - 1, x2: w, y2: hgt - 1, class: 'axis', 'vector-effect': 'non-scaling-stroke' }));
  const nums = values.filter((v) => v !== null);
  if (nums.length < 2) return svg;
  const max = Math.max(...nums, 1e-9);
  const step = w / (Math.max(values.length, CHART_MIN_SLOTS) - 1);
  const x0 = w - (values.length - 1) * step;
  const pts = [];
  values.forEach((v, i) => {
    if (v === null) return;
    pts.push(`${(x0 + i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
  });
  svg.append(h('polyline', { points: pts.join(' '), class: 'line', 'vector-effect': 'non-scaling-stroke' }));
  return svg;
}

const CARDS = [
  { key: 'connections', title: 'Connections', unit: '', fmt: (v) => String(v) },
  { key: 'waiting', title: 'Sessions waiting for a resume', unit: '', fmt: (v) => String(v) },
  { key: 'pubRate', title: 'Publishes/s', unit: '/s', fmt: (v) => v.toFixed(1) },
  { key: 'delRate', title: 'Deliveries/s', unit: '/s', fmt: (v) => v.toFixed(1) },
  { key: 'acksPending', title: 'Acks pending', unit: '', fmt: (v) => String(v) },
  { key: 'commitMs', title: 'Store commit latency (mean)', unit: 'ms', fmt: (v) => `${v.toFixed(2)} ms` },
];

export function overview(main) {
  const series = Object.fromEntries(CARDS.map((c) => [c.key, []]));
  let prev = null;
  let stopped = false;
  let timer = null;
  const grid = h('div', { class: 'cards' });
  const totals = h('div', { class: 'totals' });
  const status = h('p', { class: 'muted', id: 'overview-status' }, 'Reading GET /v1/overview…');
  main.replaceChildren(
    h('h1', {}, 'Overview'),
    h('p', { class: 'muted' }, `Live from the server's own counters (GET /v1/overview every ${OVERVIEW_POLL_MS / 1000} s); rates over the last interval.`),
    grid, totals, status,
  );

  function push(key, v) {
    const s = series[key];
    s.push(v);
    if (s.length > CHART_SAMPLES) s.shift();
  }

  function draw(o) {
    grid.replaceChildren(...CARDS.map((c) => {
      const s = series[c.key];
      const v = s.length ? s[s.length - 1] : null;
      return h('section', { class: 'card', 'data-card': c.key },
        h('h2', {}, c.title),
        h('div', { class: 'value' }, v === null ? '—' : c.fmt(v)),
        sparkline(s),
        h('div', { class: 'peak muted' }, s.some((x) => x !== null)
          ? `peak ${c.fmt(Math.max(...s.filter((x) => x !== null)))} in the last ${span(s.length * OVERVIEW_POLL_MS)}`
          : 'no reading yet'));
    }));
    const row = (k, v) => h('tr', {}, h('th', {}, k), h('td', {}, String(v)));
    const ev = Object.entries(o.evictions).map(([r, n]) => `${r} ${n}`).join(' · ');
    const rf = Object.entries(o.resumes_failed).map(([r, n]) => `${r} ${n}`).join(' · ');
    totals.replaceChildren(h('table', { class: 'kv' },
      h('caption', {}, 'Totals since the server started'),
      row('publishes', o.publishes), row('deliveries', o.deliveries),
      row('redeliveries', o.redeliveries), row('acks', o.acks), row('gaps', o.gaps),
      row('evictions', ev), row('failed resumes', rf), row('flow-control stalls', o.flow_stalls),
      row('store commits', o.store_commits), row('store failures', o.store_failures),
      row('sessions connected', o.sessions_connected)));
  }

  async function tick() {
    try {
      const o = await api('/v1/overview');
      if (stopped) return;
      push('connections', o.connections);
      push('waiting', o.sessions_disconnected);
      push('acksPending', o.acks_pending);
      if (prev) {
        const dt = Math.max(1, o.now_ms - prev.now_ms) / 1000;
        push('pubRate', Math.max(0, o.publishes - prev.publishes) / dt);
        push('delRate', Math.max(0, o.deliveries - prev.deliveries) / dt);
        const n = o.store_commits - prev.store_commits;
        push('commitMs', n > 0 ? (o.store_commit_micros - prev.store_commit_micros) / n / 1000 : null);
      }
      prev = o;
      draw(o);
      status.textContent = `Updated ${utc(o.now_ms)}`;
    } catch (e) {
      if (stopped || e instanceof Unauthorized) return;
      status.replaceChildren(errorBox(e));
    }
    if (!stopped) timer = setTimeout(tick, OVERVIEW_POLL_MS);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// --- live events --------------------------------------------------------------------------

const EVENTS_STORE = 'herald.events';
const KINDS = ['eviction', 'resume_failed', 'gap', 'kick', 'identity_rejected', 'webhook_failed'];

/// What an event says, in words.
export function describe(e) {
  const d = e.data || {};
  switch (e.kind) {
    case 'eviction': {
      const by = d.by || {};
      const who = by.conn ? `replaced by connection ${by.conn}${by.addr ? ` (${by.addr})` : ''}` : by.addr ? `by ${by.addr}` : 'by the server';
      return `evicted (${d.reason}), ${who}${d.addr ? `; it was connected from ${d.addr}` : '; it had no connection'}`;
    }
    case 'resume_failed':
      return `resume failed: ${d.reason}${d.evicted ? ` (the session was evicted: ${d.evicted})` : ''}${d.addr ? ` from ${d.addr}` : ''}`;
    case 'gap':
      return `gap on ${d.s}: offsets ${d.from}–${d.to} removed by ${d.reason || 'retention'} before delivery`;
    case 'kick':
      return `kicked by ${d.by}`;
    case 'identity_rejected':
      return `login refused: uid in use (held by session ${e.session})${d.addr ? `, from ${d.addr}` : ''}`;
    case 'webhook_failed':
      return `webhook ${d.webhook} failing for event ${d.event_id} (${d.event_type}) after ${d.attempts} attempts: ${d.error}`;
    default:
      return JSON.stringify(d);
  }
}

function eventRow(e) {
  return h('tr', { 'data-event-id': e.id, 'data-kind': e.kind, 'data-uid': e.uid || '', class: `ev-${e.kind}` },
    h('td', {}, String(e.id)), h('td', { class: 'nowrap' }, utc(e.ts)),
    h('td', {}, h('span', { class: `tag tag-${e.kind}` }, e.kind)),
    h('td', {}, e.uid ? h('a', { href: `#/sessions?uid=${encodeURIComponent(e.uid)}`, title: 'open sessions of this uid' }, e.uid) : ''),
    h('td', {}, e.device || ''),
    h('td', { class: 'mono' }, e.session || ''), h('td', { class: 'mono' }, e.conn || ''),
    h('td', {}, describe(e)));
}

function loadKept() {
  try {
    const v = JSON.parse(sessionStorage.getItem(EVENTS_STORE) || 'null');
    if (v && Array.isArray(v.items) && (v.cursor === null || Number.isInteger(v.cursor))) return v;
  } catch { /* a damaged entry is dropped */ }
  return null;
}

export function events(main, _args, q) {
  const uid = q.get('uid') || '';
  const kind = q.get('type') || '';
  let kept = loadKept();
  let feed = null;
  let stopped = false;
  const state = h('span', { class: 'badge', id: 'feed-state' }, 'connecting');
  const body = h('tbody', { id: 'events-body' });
  const count = h('span', { class: 'muted', id: 'events-count' });
  const lagged = h('div', { id: 'lagged' });
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    setQuery('events', { uid: f.get('uid').trim(), type: f.get('type') });
  } },
  field('uid', 'uid', uid, 'any uid'),
  h('label', {}, 'kind', h('select', { name: 'type' }, h('option', { value: '' }, 'any kind'),
    KINDS.map((k) => h('option', { value: k, selected: k === kind }, k)))),
  h('button', { type: 'submit' }, 'Filter'),
  h('button', { type: 'button', class: 'secondary', onclick: () => {
    sessionStorage.removeItem(EVENTS_STORE);
    kept = { cursor: feed?.cursor() ?? null, items: [] };
    save();
    paint();
  } }, 'Clear list'));
  main.replaceChildren(
    h('h1', {}, 'Live events ', state),
    h('p', { class: 'muted' }, 'Evictions, failed resumes, gaps, kicks, identity refusals and webhook failures as they are recorded (GET /v1/events/stream). The list and the position in the feed are kept in this tab, so a reload resumes where it was: nothing lost, nothing twice.'),
    form, lagged, count,
    h('table', { class: 'list' }, h('thead', {}, h('tr', {},
      ['id', 'time', 'kind', 'uid', 'device', 'session', 'connection', 'what happened'].map((c) => h('th', {}, c)))), body));

  const matches = (e) => (!uid || e.uid === uid) && (!kind || e.kind === kind);
  function save() {
    sessionStorage.setItem(EVENTS_STORE, JSON.stringify(kept));
  }
  function paint() {
    const shown = kept.items.filter(matches);
    body.replaceChildren(...shown.slice().reverse().map(eventRow));
    count.textContent = `${shown.length} shown of ${kept.items.length} kept${uid || kind ? ' (filtered)' : ''}`;
  }
  function add(e) {
    kept.items.push(e);
    if (kept.items.length > EVENTS_KEPT) kept.items.splice(0, kept.items.length - EVENTS_KEPT);
    kept.cursor = e.id;
    save();
    if (matches(e)) {
      body.prepend(eventRow(e));
      const shown = kept.items.filter(matches).length;
      count.textContent = `${shown} shown of ${kept.items.length} kept${uid || kind ? ' (filtered)' : ''}`;
    }
  }
  (async () => {
    try {
      if (kept) {
        // Kept from another server at this address (its feed started over): start afresh.
        const newest = (await api('/v1/events', { query: { limit: 1 } })).items || [];
        if ((newest[0]?.id ?? 0) < (kept.cursor ?? 0)) kept = null;
      }
      if (!kept) {
        // Nothing kept: the newest events, then the feed after the last of them (after=0 when
        // there are none, so an event recorded meanwhile is not missed).
        const r = await api('/v1/events', { query: { limit: EVENTS_BACKLOG } });
        const items = r.items || [];
        kept = { cursor: items.length ? items[items.length - 1].id : 0, items };
        save();
      }
      if (stopped) return;
      paint();
      feed = openFeed({
        after: kept.cursor,
        onEvent: add,
        onLagged: (l) => lagged.replaceChildren(h('p', { class: 'error' },
          `Events after ${l.after}${l.until ? ` up to ${l.until}` : ''} could not be read (${l.reason}); fetch ${l.fetch}`)),
        onStatus: (s, detail) => {
          state.textContent = s;
          state.className = `badge ${s}`;
          if (detail) state.title = detail;
        },
      });
    } catch (e) {
      if (!stopped) main.append(errorBox(e) || '');
    }
  })();
  return () => {
    stopped = true;
    feed?.close();
  };
}

// --- sessions -----------------------------------------------------------------------------

function positions(list) {
  return h('ul', { class: 'positions' }, list.map((p) => h('li', { 'data-stream': p.s },
    h('span', { class: 'mono' }, p.s), ` acked ${p.acked} · sent ${p.sent} · last ${p.last}`,
    p.unacked ? h('span', { class: 'warn' }, ` · ${p.unacked} unacked`) : null,
    p.behind > p.unacked ? h('span', { class: 'muted' }, ` · ${p.behind - p.unacked} not sent yet`) : null)));
}

export function sessions(main, _args, q) {
  const uid = q.get('uid') || '';
  const device = q.get('device') || '';
  let stopped = false;
  let timer = null;
  let last = '';
  const kicked = new Map(); // session id -> log line element
  const body = h('tbody', { id: 'sessions-body' });
  const note = h('p', { class: 'muted', id: 'sessions-count' });
  const log = h('ul', { id: 'kick-log', class: 'log' });
  const live = h('ul', { id: 'sessions-live', class: 'log' });
  const err = h('div');
  main.replaceChildren(
    h('h1', {}, 'Sessions'),
    h('form', { class: 'filters', onsubmit: (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      setQuery('sessions', { uid: f.get('uid').trim(), device: f.get('device').trim() });
    } }, field('uid', 'uid', uid, 'any uid'), field('device', 'device', device, 'any device'),
    h('button', { type: 'submit' }, 'Search')),
    err, note,
    h('table', { class: 'list' }, h('thead', {}, h('tr', {},
      ['uid / device', 'session', 'state', 'connection', 'since', 'subscriptions', 'streams (acked · sent · last)', ''].map((c) => h('th', {}, c)))), body),
    h('h2', {}, 'Kicks'), log,
    h('h2', {}, 'Evictions and kicks, live'), live);

  function row(s) {
    const subs = Object.entries(s.subs || {});
    return h('tr', { 'data-session': s.id, 'data-uid': s.uid, 'data-device': s.device, class: `st-${s.state}` },
      h('td', {}, h('b', {}, s.uid), ' / ', s.device),
      h('td', { class: 'mono' }, s.id),
      h('td', {}, h('span', { class: `tag st-${s.state}` }, s.state)),
      h('td', { class: 'mono' }, s.conn ? `${s.conn} ${s.addr || ''}` : `— (last seen ${utc(s.last_seen_ms)})`),
      h('td', { class: 'nowrap' }, utc(s.created_ms)),
      h('td', {}, subs.length ? subs.map(([c, o]) => `${c}@${o}`).join(', ') : '—'),
      h('td', {}, positions(s.positions || [])),
      h('td', {}, h('button', { type: 'button', class: 'danger', 'data-kick': s.id, onclick: () => kick(s) }, 'Kick')));
  }

  async function refresh() {
    try {
      const r = await api('/v1/sessions/positions', { query: { uid, device, limit: LIST_LIMIT } });
      if (stopped) return;
      err.replaceChildren();
      // A connected session's last_seen_ms moves with every frame and is not shown: it does
      // not redraw the table (a redraw under the pointer could swallow a click on Kick).
      const text = JSON.stringify(r.items.map(({ last_seen_ms: seen, ...rest }) => (rest.conn ? rest : { ...rest, seen })));
      if (text !== last) {
        last = text;
        body.replaceChildren(...r.items.map(row));
        note.textContent = `${r.items.length} open session${r.items.length === 1 ? '' : 's'}${uid || device ? ' matching' : ''}${r.items.length >= LIST_LIMIT ? ` (the first ${LIST_LIMIT})` : ''}`;
      }
    } catch (e) {
      if (!stopped) err.replaceChildren(errorBox(e) || '');
    }
  }
  async function poll() {
    await refresh();
    if (!stopped) timer = setTimeout(poll, SESSIONS_POLL_MS);
  }

  async function kick(s) {
    const conn = s.conn ? `its connection ${s.conn} (${s.addr}) gets "evicted: kicked" and is closed` : 'it has no connection now';
    if (!confirm(`Kick session ${s.id} of ${s.uid}/${s.device}?\n\nThe session is closed and cannot be resumed; ${conn}.`)) return;
    const line = h('li', { 'data-kicked': s.id }, `${utc(Date.now())}  kick ${s.id} (${s.uid}/${s.device}) sent; waiting for the eviction…`);
    log.prepend(line);
    kicked.set(s.id, line);
    try {
      await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
    } catch (e) {
      kicked.delete(s.id);
      line.textContent = `${utc(Date.now())}  kick ${s.id} failed: ${e.message}`;
      line.className = 'error';
    }
  }

  // Evictions arriving live (from now on): the kicked session's line is completed with the
  // eviction the server recorded.
  const feed = openFeed({
    after: null,
    onEvent: (e) => {
      if (e.kind !== 'eviction' && e.kind !== 'kick') return;
      if ((uid && e.uid !== uid) || (device && e.device !== device)) return;
      live.prepend(h('li', { 'data-event-id': e.id, 'data-kind': e.kind, 'data-session': e.session || '' },
        `${utc(e.ts)}  ${e.kind}  ${e.uid}${e.device ? `/${e.device}` : ''}  ${e.session || ''}  ${describe(e)}`));
      const line = kicked.get(e.session);
      if (line && e.kind === 'eviction') {
        line.textContent = `${utc(e.ts)}  ${e.session} (${e.uid}/${e.device}) ${describe(e)}`;
        line.className = 'ok';
        line.dataset.evicted = e.data?.reason || '';
        kicked.delete(e.session);
      }
      refresh();
    },
  });
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    feed.close();
  };
}

// --- messages -----------------------------------------------------------------------------

export function messages(main, _args, q) {
  const from = q.get('from') || '';
  const to = q.get('to') || '';
  const since = q.get('since') || '';
  const until = q.get('until') || '';
  let stopped = false;
  const body = h('tbody', { id: 'messages-body' });
  const note = h('p', { class: 'muted', id: 'messages-count' });
  const err = h('div');
  main.replaceChildren(
    h('h1', {}, 'Messages'),
    h('form', { class: 'filters', onsubmit: (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const get = (k) => f.get(k).trim();
      setQuery('messages', { from: get('from'), to: get('to'), since: get('since'), until: get('until') });
    } },
    field('from', 'from', from, 'sender uid'),
    field('to', 'to', to, 'user:UID or chan:NAME'),
    field('since', 'since', since, '15m, 2025-06-01T12:00:00Z'),
    field('until', 'until', until, 'now'),
    h('button', { type: 'submit' }, 'Search')),
    h('form', { class: 'filters', onsubmit: (ev) => {
      ev.preventDefault();
      const id = new FormData(ev.target).get('id').trim();
      if (id) location.hash = `#/trace/${encodeURIComponent(id)}`;
    } }, field('trace a message id', 'id', '', 'm_…'), h('button', { type: 'submit' }, 'Trace')),
    err, note,
    h('table', { class: 'list' }, h('thead', {}, h('tr', {},
      ['time', 'message id', 'stream', 'offset', 'from', 'body'].map((c) => h('th', {}, c)))), body));
  (async () => {
    try {
      const query = { from, s: to, limit: LIST_LIMIT };
      const now = Date.now();
      query.since = parseWhen(since, now);
      query.until = parseWhen(until, now);
      const r = await api('/v1/messages', { query });
      if (stopped) return;
      body.replaceChildren(...r.items.map((m) => h('tr', { 'data-message': m.id },
        h('td', { class: 'nowrap' }, utc(m.ts)),
        h('td', { class: 'mono' }, h('a', { href: `#/trace/${encodeURIComponent(m.id)}` }, m.id)),
        h('td', { class: 'mono' }, m.s), h('td', {}, String(m.o)), h('td', {}, m.from),
        h('td', { class: 'mono' }, preview(m.body)))));
      note.textContent = `${r.items.length} message${r.items.length === 1 ? '' : 's'}, oldest first${r.items.length >= LIST_LIMIT ? ` (the first ${LIST_LIMIT}: narrow with since/until)` : ''}`;
    } catch (e) {
      if (!stopped) err.replaceChildren(errorBox(e) || '');
    }
  })();
  return () => {
    stopped = true;
  };
}

// --- trace --------------------------------------------------------------------------------

const HEADINGS = {
  acked: 'acked',
  sent: 'sent, not acknowledged',
  pending: 'pending, not sent',
  skipped: 'not applicable',
};

/// The timeline of one recipient, as `herald trace` prints it: [when, what] steps.
export function steps(m, r, channel) {
  const out = [[utc(m.ts), 'accepted (durable)', 'accepted']];
  const why = r.reason || 'no reason recorded';
  if (r.state === 'skipped') {
    out.push(['not applicable', why, 'skipped']);
    return out;
  }
  if (r.sent_ms !== null && r.sent_ms !== undefined) {
    const to = r.session ? ` to session ${r.session}` : '';
    const after = span(r.sent_ms - m.ts);
    if (r.attempts > 1) {
      out.push([utc(r.sent_ms), `sent (first attempt), ${after} after it was accepted`, 'sent']);
      const n = r.attempts - 1;
      out.push([utc(r.last_sent_ms), `redelivered ${n} ${n === 1 ? 'time' : 'times'} (${r.attempts} attempts in all), the last${to}`, 'sent']);
    } else {
      out.push([utc(r.sent_ms), `sent${to} (attempt 1), ${after} after it was accepted`, 'sent']);
    }
  } else if (channel && (r.state === 'sent' || r.state === 'acked')) {
    out.push(['-', 'sent to the session (channel deliveries record no time)', 'sent']);
  }
  switch (r.state) {
    case 'acked':
      out.push(r.acked_ms !== null && r.acked_ms !== undefined
        ? [utc(r.acked_ms), `acknowledged, ${span(r.acked_ms - m.ts)} after it was accepted`, 'acked']
        : ['-', 'acknowledged (channel positions record no time)', 'acked']);
      break;
    case 'sent': out.push(['not acknowledged', why, 'stopped']); break;
    case 'pending': out.push(['not sent', why, 'stopped']); break;
    case 'trimmed': out.push([utc(m.trimmed_ms), why, 'stopped']); break;
    default: out.push(['-', why, 'stopped']);
  }
  return out;
}

export function trace(main, args, q) {
  const id = decodeURIComponent(args[0] || '');
  const offset = Number(q.get('offset') || 0);
  let stopped = false;
  let timer = null;
  let last = '';
  main.replaceChildren(h('h1', {}, 'Trace ', h('span', { class: 'mono' }, id)), h('p', { class: 'muted' }, 'Reading…'));
  // Read again every TRACE_POLL_MS while the page is open: a delivery in flight moves on.
  const load = async () => {
    try {
      const t = await api(`/v1/messages/${encodeURIComponent(id)}`, { query: { offset, limit: LIST_LIMIT } });
      if (stopped) return;
      timer = setTimeout(load, TRACE_POLL_MS);
      const text = JSON.stringify(t);
      if (text === last) return;
      last = text;
      const m = t.message;
      const channel = m.s.startsWith('chan:');
      const kv = (k, v) => h('tr', {}, h('th', {}, k), h('td', {}, v));
      const sum = t.summary || {};
      const chips = Object.entries(sum).filter(([k, n]) => n > 0 || ['acked', 'sent', 'pending'].includes(k))
        .map(([k, n]) => h('span', { class: `tag st-${k}`, 'data-summary': k }, `${n} ${k}`));
      const total = t.page?.total ?? t.recipients.length;
      const parts = [
        h('h1', {}, 'Trace ', h('span', { class: 'mono' }, m.id)),
        h('table', { class: 'kv' },
          kv('stream', `${m.s} offset ${m.o}`), kv('from', m.from),
          kv('accepted', `${utc(m.ts)} (stored durably)`),
          kv('body', m.trimmed_ms ? `(removed by retention at ${utc(m.trimmed_ms)}, ${span(m.trimmed_ms - m.ts)} after it was accepted)` : preview(m.body)),
          m.receipt ? kv('receipt', 'requested by the sender') : null,
          kv('summary', h('span', {}, `${total} ${channel ? 'subscribed session' : 'device'}${total === 1 ? '' : 's'}: `, chips))),
      ];
      if (total > t.recipients.length) {
        const next = offset + t.recipients.length;
        parts.push(h('p', { class: 'muted' }, `Recipients ${offset + 1}–${next} of ${total}. `,
          next < total ? h('a', { href: `#/trace/${encodeURIComponent(m.id)}?offset=${next}` }, 'next page') : null));
      }
      if (total === 0) {
        parts.push(h('p', { class: 'muted' }, channel
          ? 'No open session is subscribed to this channel.'
          : `No device of ${m.s.replace(/^inbox:/, '')} is known yet: the message waits in the inbox for its first device.`));
      }
      for (const r of t.recipients) {
        const trimmedHead = r.cause === 'gap' ? 'NOT DELIVERED: inside a gap' : 'NOT DELIVERED: trimmed by retention';
        const head = r.state === 'trimmed' ? trimmedHead : (HEADINGS[r.state] || r.state);
        parts.push(h('section', { class: `recipient st-${r.state}`, 'data-recipient': `${r.uid}/${r.device}`, 'data-state': r.state, 'data-cause': r.cause || '' },
          h('h2', {}, `${r.uid}/${r.device}${channel && r.session ? ` (session ${r.session})` : ''}: `, h('span', { class: `tag st-${r.state}` }, head)),
          h('ol', { class: 'timeline' }, steps(m, r, channel).map(([when, what, kind]) =>
            h('li', { class: `step step-${kind}` }, h('span', { class: 'when' }, when), h('span', { class: 'what' }, what))))));
      }
      parts.push(h('p', { class: 'muted' }, 'The same facts as ', h('code', {}, `herald trace ${m.id}`),
        ` (GET /v1/messages/{id}), read every ${TRACE_POLL_MS / 1000} s.`));
      main.replaceChildren(...parts);
    } catch (e) {
      if (!stopped) main.replaceChildren(h('h1', {}, 'Trace ', h('span', { class: 'mono' }, id)), errorBox(e) || '');
    }
  };
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
