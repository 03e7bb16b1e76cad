// The operator's dashboard in a real browser (Debian's chromium through playwright-core),
// against the real herald binary: a server with an API key, real WebSocket clients making
// traffic (two devices of one uid, an eviction, an acked and an unacked message, a gap), then
// every fact checked through the rendered pages. Screenshots of each page go to outputDir().

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { chromiumPath, Client, freePort, http, outputDir, startServer, token, WAIT_MS } from './harness.mjs';

const KEY = 'dashboard-test-key-3f9c';
const SECRET = 'dashboard-test-secret-of-at-least-32-bytes';
/// The live feed must show an event this soon after it happened.
const LIVE_MS = 1000;

let browser;
let server;
let page;
const out = outputDir();
const clients = [];
/// The clients the later tests use, by name.
const live = {};
/// Uncaught errors of any page: there must be none.
const pageErrors = [];

async function connect(uid, device, extra = {}) {
  const c = await Client.connect(server, { token: token(SECRET, uid), device, ...extra });
  clients.push(c);
  return c;
}

async function shot(p, name) {
  await p.screenshot({ path: join(out, `${name}.png`), fullPage: true });
}

/// A page logged in with the key (through the login form).
async function loggedInPage() {
  const ctx = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const p = await ctx.newPage();
  p.on('pageerror', (e) => pageErrors.push(e.message));
  await p.goto(`${server.url}/dashboard#/overview`);
  await p.fill('#api-key', KEY);
  await p.click('#login button[type=submit]');
  await p.waitForSelector('[data-card=connections]');
  return p;
}

/// Ids of the rows of the live events table, in page order.
async function eventIds(p) {
  return p.$$eval('#events-body tr', (rows) => rows.map((r) => Number(r.dataset.eventId)));
}

before(async () => {
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  server = await startServer({
    env: {
      API__KEYS: KEY,
      AUTH__HS256_SECRET: SECRET,
      // Small channel retention, trimmed often: a late reader gets a gap.
      RETENTION__CHANNEL_MAX_MESSAGES: 2,
      RETENTION__TRIM_INTERVAL_MS: 100,
    },
  });
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  await server?.stop();
});

describe('with an API key', () => {
  test('a missing or wrong key gets the login form, never data', async () => {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    p.on('pageerror', (e) => pageErrors.push(e.message));
    for (const route of ['overview', 'events', 'sessions', 'messages', 'trace/m_x']) {
      await p.goto(`${server.url}/dashboard#/${route}`);
      await p.waitForSelector('#login');
      assert.equal(await p.isVisible('#nav'), false, 'no navigation before login');
      assert.equal(await p.$('main table'), null, `no data on #/${route}`);
    }
    await p.fill('#api-key', 'not-the-key');
    await p.click('#login button[type=submit]');
    await p.waitForSelector('#login-error:has-text("Refused")');
    assert.equal(await p.$('[data-card]'), null);
    await shot(p, 'login');
    // A wrong key kept in the tab is dropped at the next load.
    await p.evaluate(() => sessionStorage.setItem('herald.apiKey', 'stale-key'));
    await p.reload();
    await p.waitForSelector('#login-error:has-text("Refused")');
    assert.equal(await p.evaluate(() => sessionStorage.getItem('herald.apiKey')), null);
    // The API itself refuses the data routes without the key.
    for (const path of ['/v1/overview', '/v1/sessions/positions', '/v1/events/stream']) {
      assert.equal((await http(server, 'GET', path)).status, 401, path);
    }
    await ctx.close();
  });

  test('live events: an eviction appears within a second, and a reload loses and repeats nothing', async () => {
    page = await loggedInPage();
    const b1 = await connect('bob', 'b1');
    live.b2 = await connect('bob', 'b2');
    await page.goto(`${server.url}/dashboard#/events`);
    await page.waitForSelector('#feed-state.live');
    // A fresh login of bob/b1 replaces (evicts) the first one.
    const b1again = await connect('bob', 'b1');
    live.b1 = b1again;
    const seen = Date.now();
    const row = await page.waitForSelector('#events-body tr[data-kind=eviction][data-uid=bob]', { timeout: LIVE_MS });
    const waited = Date.now() - seen;
    const text = await row.textContent();
    assert.match(text, /replaced/);
    assert.ok(text.includes(b1.welcome.session), 'the evicted session');
    assert.ok(text.includes(b1again.welcome.conn), 'the connection that replaced it');
    assert.ok(waited <= LIVE_MS, `eviction shown after ${waited} ms`);
    const evicted = await b1.next((f) => f.t === 'evicted', 'evicted');
    assert.equal(evicted.reason, 'replaced');

    // Away from the page, more events happen; back on it, each event is listed once.
    const before = await eventIds(page);
    await page.goto('about:blank');
    await connect('carol', 'c1');
    await connect('carol', 'c1');
    await connect('carol', 'c1');
    await page.goto(`${server.url}/dashboard#/events`);
    const all = (await http(server, 'GET', '/v1/events?limit=1000', { key: KEY })).body.items.map((e) => e.id);
    await page.waitForFunction((n) => document.querySelectorAll('#events-body tr').length === n, all.length);
    const ids = await eventIds(page);
    assert.deepEqual(ids, all.slice().reverse(), 'every stored event once, newest first');
    assert.ok(before.every((id) => ids.includes(id)));
    await page.reload();
    await page.waitForSelector('#feed-state.live');
    assert.deepEqual(await eventIds(page), ids, 'a reload keeps the list as it was');
    // Filtered by uid, in the URL.
    await page.goto(`${server.url}/dashboard#/events?uid=carol`);
    await page.waitForSelector('#feed-state.live');
    const carol = await page.$$eval('#events-body tr', (rows) => rows.map((r) => r.dataset.uid));
    assert.deepEqual(carol, ['carol', 'carol'], 'two evictions of carol/c1');
  });

  test('trace: an acked and an unacked delivery, with states and why', async () => {
    const { b1, b2 } = live;
    const pub = await http(server, 'POST', '/v1/publish', { key: KEY, json: { to: 'user:bob', body: { text: 'hello bob' }, from: 'billing' } });
    assert.equal(pub.status, 200, JSON.stringify(pub.body));
    const m1 = await b1.next((f) => f.t === 'msg' && f.id === pub.body.id, 'the message on b1');
    await b2.next((f) => f.t === 'msg' && f.id === pub.body.id, 'the message on b2');
    b1.send({ t: 'ack', s: m1.s, o: m1.o });
    // The ack is applied: the trace says so.
    const deadline = Date.now() + WAIT_MS;
    while ((await http(server, 'GET', `/v1/messages/${pub.body.id}`, { key: KEY })).body.summary.acked !== 1) {
      assert.ok(Date.now() < deadline, 'the ack reaches the trace');
      await new Promise((r) => setTimeout(r, 50));
    }
    // Search by sender and time, as `herald messages`.
    const ts = (await http(server, 'GET', `/v1/messages/${pub.body.id}`, { key: KEY })).body.message.ts;
    await page.goto(`${server.url}/dashboard#/messages?from=billing&since=15m`);
    await page.waitForSelector('#messages-count:has-text("1 message,")');
    assert.deepEqual(await page.$$eval('#messages-body tr', (rows) => rows.map((r) => r.dataset.message)), [pub.body.id]);
    await page.goto(`${server.url}/dashboard#/messages?from=billing&until=${ts - 1}`);
    await page.waitForSelector('#messages-count:has-text("0 messages")');
    await page.goto(`${server.url}/dashboard#/messages?from=nobody`);
    await page.waitForSelector('#messages-count:has-text("0 messages")');
    await page.goto(`${server.url}/dashboard#/messages?since=yesterday`);
    await page.waitForSelector('main .error:has-text("is not a time")');
    await page.goto(`${server.url}/dashboard#/messages?to=user:bob`);
    const link = await page.waitForSelector(`#messages-body tr[data-message="${pub.body.id}"] a`);
    assert.match(await page.textContent(`#messages-body tr[data-message="${pub.body.id}"]`), /billing/);
    await shot(page, 'messages');
    await link.click();
    await page.waitForSelector('[data-recipient="bob/b1"]');
    assert.equal(page.url(), `${server.url}/dashboard#/trace/${pub.body.id}`, 'the trace has its own URL');
    const acked = await page.textContent('[data-recipient="bob/b1"]');
    assert.equal(await page.getAttribute('[data-recipient="bob/b1"]', 'data-state'), 'acked');
    assert.match(acked, /accepted \(durable\)/);
    assert.match(acked, /sent to session .* \(attempt 1\)/);
    assert.match(acked, /acknowledged, \d+ ms after it was accepted/);
    assert.equal(await page.getAttribute('[data-recipient="bob/b2"]', 'data-state'), 'sent');
    assert.equal(await page.getAttribute('[data-recipient="bob/b2"]', 'data-cause'), 'awaiting_ack');
    assert.match(await page.textContent('[data-recipient="bob/b2"]'), /not acknowledged/);
    assert.match(await page.textContent('[data-summary=acked]'), /1 acked/);
    await shot(page, 'trace');
  });

  test('a gap: a late reader of a trimmed channel, shown live', async () => {
    await page.goto(`${server.url}/dashboard#/events?type=gap`);
    await page.waitForSelector('#feed-state.live');
    for (let i = 0; i < 5; i++) {
      const r = await http(server, 'POST', '/v1/publish', { key: KEY, json: { to: 'chan:room', body: { n: i } } });
      assert.equal(r.status, 200);
    }
    // Retention keeps 2 of 5: wait until the trim ran.
    const deadline = Date.now() + WAIT_MS;
    while ((await http(server, 'GET', '/v1/streams/chan:room', { key: KEY })).body.first < 4) {
      assert.ok(Date.now() < deadline, 'retention trims chan:room');
      await new Promise((r) => setTimeout(r, 50));
    }
    const dana = await connect('dana', 'd1');
    dana.send({ t: 'sub', seq: 1, chan: 'room', from: 0 });
    const gap = await dana.next((f) => f.t === 'gap', 'gap');
    const seen = Date.now();
    const row = await page.waitForSelector('#events-body tr[data-kind=gap][data-uid=dana]', { timeout: LIVE_MS });
    assert.ok(Date.now() - seen <= LIVE_MS);
    assert.match(await row.textContent(), new RegExp(`gap on chan:room: offsets ${gap.from}–${gap.to}`));
    await page.goto(`${server.url}/dashboard#/events`);
    await page.waitForSelector('#events-body tr[data-kind=gap]');
    await shot(page, 'events');
  });

  test('sessions: search, positions, and a kick that evicts a live client', async () => {
    const { b1, b2 } = live;
    await page.goto(`${server.url}/dashboard#/sessions?uid=bob`);
    const row = await page.waitForSelector(`#sessions-body tr[data-session="${b2.welcome.session}"]`);
    const devices = await page.$$eval('#sessions-body tr', (rows) => rows.map((r) => `${r.dataset.uid}/${r.dataset.device}`));
    assert.deepEqual(devices.sort(), ['bob/b1', 'bob/b2'], 'the open sessions of bob');
    const text = await row.textContent();
    assert.match(text, /connected/);
    assert.ok(text.includes(b2.welcome.conn), 'its connection');
    assert.match(text, /127\.0\.0\.1:\d+/, 'its address');
    assert.match(text, /inbox:bob acked 0 · sent 1 · last 1 · 1 unacked/, 'b2 has the message in flight');
    // b1's ack moves its inbox cursor (written in the background; the page polls).
    await page.waitForSelector('#sessions-body tr[data-device=b1] li[data-stream="inbox:bob"]:text-matches("acked 1 · sent 1 · last 1$")');
    // Device search.
    await page.goto(`${server.url}/dashboard#/sessions?uid=bob&device=b2`);
    await page.waitForFunction(() => document.querySelectorAll('#sessions-body tr').length === 1);
    await page.goto(`${server.url}/dashboard#/sessions?uid=bob`);
    await page.waitForSelector(`#sessions-body tr[data-session="${b2.welcome.session}"]`);
    await shot(page, 'sessions');

    // Kick, confirmed: the client is evicted and the eviction shows up live.
    let asked = '';
    page.once('dialog', (d) => {
      asked = d.message();
      d.accept();
    });
    await page.click(`button[data-kick="${b2.welcome.session}"]`);
    const ev = await b2.next((f) => f.t === 'evicted', 'evicted');
    assert.equal(ev.reason, 'kicked');
    assert.equal(await b2.closed, 4009);
    assert.match(asked, new RegExp(`Kick session ${b2.welcome.session}`));
    const line = await page.waitForSelector(`#kick-log li[data-kicked="${b2.welcome.session}"][data-evicted=kicked]`, { timeout: WAIT_MS });
    assert.match(await line.textContent(), /evicted \(kicked\)/);
    await page.waitForSelector(`#sessions-live li[data-kind=eviction][data-session="${b2.welcome.session}"]`);
    // The closed session leaves the list.
    await page.waitForFunction((id) => !document.querySelector(`#sessions-body tr[data-session="${id}"]`), b2.welcome.session);
    await shot(page, 'sessions-kicked');

    // Declining the confirmation kicks nothing.
    page.once('dialog', (d) => d.dismiss());
    await page.click(`button[data-kick="${b1.welcome.session}"]`);
    const still = await http(server, 'GET', '/v1/sessions?uid=bob', { key: KEY });
    assert.ok(still.body.items.some((s) => s.id === b1.welcome.session && s.state === 'connected'));
  });

  test('overview: live counters and charts', async () => {
    await page.goto(`${server.url}/dashboard#/overview`);
    // Steady traffic while it polls (bob/b1 does not ack it), so the rate charts move.
    let sending = true;
    const traffic = (async () => {
      for (let i = 0; sending && i < 400; i++) {
        await http(server, 'POST', '/v1/publish', { key: KEY, json: { to: i % 3 ? 'user:bob' : 'chan:room', body: { i } } });
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    try {
      await page.waitForFunction(() => Number(document.querySelector('[data-card=connections] .value')?.textContent) >= 3);
      await page.waitForFunction(() => Number(document.querySelector('[data-card=acksPending] .value')?.textContent) > 0);
      // Several readings with traffic: the charts have lines and the rates are not zero.
      await page.waitForFunction(() => {
        const pts = document.querySelector('[data-card=pubRate] polyline')?.getAttribute('points') || '';
        return pts.split(' ').length >= 8 && Number(document.querySelector('[data-card=pubRate] .value').textContent) > 0;
      }, null, { timeout: WAIT_MS });
      assert.ok(Number(await page.textContent('[data-card=delRate] .value')) >= 0);
      assert.match(await page.textContent('[data-card=commitMs] .value'), /^\d+\.\d\d ms$/);
      const o = (await http(server, 'GET', '/v1/overview', { key: KEY })).body;
      assert.ok(o.evictions.replaced >= 3 && o.evictions.kicked === 1, JSON.stringify(o.evictions));
      assert.ok(o.acks_pending > 0 && o.publishes > 0 && o.store_commits > 0, JSON.stringify(o));
      await shot(page, 'overview');
    } finally {
      sending = false;
      await traffic;
    }
  });
});

describe('in dev mode', () => {
  test('the dashboard opens without a key, and a trace says why a message was never delivered', async () => {
    // Inbox messages older than half a second are trimmed, checked every 100 ms.
    const dev = await startServer({ dev: true, env: { RETENTION__INBOX_MAX_AGE_MS: 500, RETENTION__TRIM_INTERVAL_MS: 100 } });
    const erin = [];
    try {
      const ctx = await browser.newContext({ viewport: { width: 1360, height: 860 } });
      const p = await ctx.newPage();
      p.on('pageerror', (e) => pageErrors.push(e.message));
      await p.goto(`${dev.url}/dashboard`);
      await p.waitForSelector('[data-card=connections]');
      assert.equal(await p.$('#login'), null);
      assert.match(await p.textContent('#who'), /dev mode/);

      // erin's device is known, then offline while a message for her is trimmed.
      const first = await Client.connect(dev, { uid: 'erin', device: 'e1' });
      erin.push(first);
      first.close();
      await first.closed;
      const pub = await http(dev, 'POST', '/v1/publish', { json: { to: 'user:erin', body: { text: 'too late' } } });
      assert.equal(pub.status, 200, JSON.stringify(pub.body));
      const deadline = Date.now() + WAIT_MS;
      while (!(await http(dev, 'GET', `/v1/messages/${pub.body.id}`)).body.message?.trimmed_ms) {
        assert.ok(Date.now() < deadline, 'retention trims the inbox message');
        await new Promise((r) => setTimeout(r, 50));
      }
      await p.goto(`${dev.url}/dashboard#/trace/${pub.body.id}`);
      await p.waitForSelector('[data-recipient="erin/e1"][data-state=trimmed][data-cause=trimmed]');
      assert.match(await p.textContent('[data-recipient="erin/e1"]'), /NOT DELIVERED: trimmed by retention/);
      assert.match(await p.textContent('main'), /removed by retention at/);

      // She comes back and is told with a gap: the trace names it.
      const back = await Client.connect(dev, { uid: 'erin', device: 'e1' });
      erin.push(back);
      await back.next((f) => f.t === 'gap', 'the gap of the trimmed inbox message');
      // The open trace page reads the trace again by itself.
      await p.waitForSelector('[data-recipient="erin/e1"][data-state=trimmed][data-cause=gap]', { timeout: WAIT_MS });
      assert.match(await p.textContent('[data-recipient="erin/e1"]'), /NOT DELIVERED: inside a gap/);
      await shot(p, 'trace-gap');
      await ctx.close();
    } finally {
      for (const c of erin) c.close();
      await dev.stop();
    }
  });
});

describe('across a server restart', () => {
  test('the live feed reconnects from its cursor: events meanwhile arrive once, none twice', async () => {
    const port = await freePort();
    let srv = await startServer({ dev: true, port });
    const conns = [];
    const ctx = await browser.newContext({ viewport: { width: 1360, height: 860 } });
    try {
      const p = await ctx.newPage();
      p.on('pageerror', (e) => pageErrors.push(e.message));
      await p.goto(`${srv.url}/dashboard#/events`);
      await p.waitForSelector('#feed-state.live');
      conns.push(await Client.connect(srv, { uid: 'fay', device: 'f1' }));
      conns.push(await Client.connect(srv, { uid: 'fay', device: 'f1' }));
      await p.waitForSelector('#events-body tr[data-kind=eviction][data-uid=fay]');

      await srv.stop({ keep: true });
      await p.waitForSelector('#feed-state.reconnecting');
      srv = await startServer({ dev: true, port, dir: srv.dir });
      // Evictions right after the restart, before the page is back on the stream.
      for (let i = 0; i < 3; i++) conns.push(await Client.connect(srv, { uid: 'gus', device: 'g1' }));
      await p.waitForSelector('#feed-state.live', { timeout: WAIT_MS });
      const all = (await http(srv, 'GET', '/v1/events?limit=1000')).body.items.map((e) => e.id);
      assert.equal(all.length, 3, 'fay once, gus twice');
      await p.waitForFunction((n) => document.querySelectorAll('#events-body tr').length === n, all.length);
      assert.deepEqual(await eventIds(p), all.slice().reverse());
    } finally {
      for (const c of conns) c.close();
      await ctx.close();
      await srv.stop();
    }
  });
});

describe('every page', () => {
  test('raised no error in the browser', () => {
    assert.deepEqual(pageErrors, []);
  });
});
