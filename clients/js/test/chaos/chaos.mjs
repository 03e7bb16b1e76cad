#!/usr/bin/env node
// Usage: node test/chaos/chaos.mjs [--seconds N] [--seed S] [--publishers N] [--subscribers M]
//
// The chaos run with JS SDK clients (like scripts/soak for the Rust SDK): N publishers and M
// subscribers over two channels and the subscribers' inboxes, through a fault-injecting proxy
// (cuts, half-open stalls longer than the heartbeat, latency, throttling, refused connections) at random,
// plus kill -9 and restart of the server (one per minute, at least one). One subscriber asks for
// a 250 ms reconnect window, so its resumes fail and it recovers through new sessions. The run
// drives only the public API: it never resends or dedupes itself.
//
// Ends with its figures, one per line (sent, delivered, faults injected, lost, duplicates,
// order violations) and exits non-zero unless lost, duplicates and order violations are 0.
import { connect, ReconnectStrategy } from "../../dist/index.js";
import { Herald } from "../support/herald.mjs";
import { Proxy, rng } from "../support/proxy.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  if (!Number.isInteger(v) || v < 0) {
    console.error(`chaos: --${name} needs a whole number, got ${args[i + 1]}`);
    process.exit(2);
  }
  return v;
};
if (args.includes("--help") || args.includes("-h")) {
  console.log("usage: chaos.mjs [--seconds N (10)] [--seed S (random)] [--publishers N (3)] [--subscribers M (3)]");
  process.exit(0);
}
const SECS = opt("seconds", Number(process.env.HERALD_JS_CHAOS_SECS ?? 10));
const SEED = opt("seed", Number(process.env.HERALD_CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31)));
const NPUB = opt("publishers", 3);
const NSUB = opt("subscribers", 3);
// One random source for the fault schedule, one per publisher for its targets.
const rand = rng(SEED);
const pick = (r, xs) => xs[Math.floor(r() * xs.length)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
console.log(`==> [chaos-js] ${SECS} s of faults, seed ${SEED}, ${NPUB} publishers, ${NSUB} subscribers`);

const server = await Herald.start({
  SESSION__HEARTBEAT_MS: "300",
  SESSION__HEARTBEAT_GRACE_MS: "200",
  LIMITS__REQUESTS_PER_SEC: "0",
  RETENTION__CHANNEL_MAX_MESSAGES: "100000000",
});
const proxy = await Proxy.start(server.addr);
const chans = ["room0", "room1"];
const subs = Array.from({ length: NSUB }, (_, i) => `sub${i}`);
const targets = [...chans.map((c) => `chan:${c}`), ...subs.map((u) => `user:${u}`)];
const common = { url: proxy.wsUrl, reconnect: ReconnectStrategy.exponential(20, 500), connectTimeoutMs: 2000, heartbeatGraceMs: 500 };

// --- subscribers ---------------------------------------------------------------------------
const receivers = [];
for (const [i, uid] of subs.entries()) {
  const r = { uid, got: new Map(), gaps: [], dups: 0, disorder: 0, events: {} };
  r.client = await connect({
    ...common,
    devUid: uid,
    device: `${uid}-d`,
    ...(i === 0 ? { reconnectTimeoutMs: 250 } : {}),
    onEvent: (e) => {
      r.events[e.type] = (r.events[e.type] ?? 0) + 1;
      if (e.type === "gap") r.gaps.push(e);
    },
  });
  for (const c of chans) await r.client.subscribe(c, 0);
  r.client.onDelivery((d) => {
    let m = r.got.get(d.stream);
    if (!m) r.got.set(d.stream, (m = { keys: new Set(), last: 0, count: 0 }));
    if (m.keys.has(d.body?.k)) r.dups++;
    if (d.offset <= m.last) r.disorder++;
    m.keys.add(d.body?.k);
    m.last = Math.max(m.last, d.offset);
    m.count++;
  });
  receivers.push(r);
}

// --- publishers ------------------------------------------------------------------------------
let running = true;
const publishers = [];
for (let p = 0; p < NPUB; p++) {
  const c = await connect({ ...common, devUid: `pub${p}`, device: `pub${p}-d`, ...(p === 0 ? { reconnectTimeoutMs: 250 } : {}) });
  const me = { ok: [], failed: [], sent: 0 };
  me.done = (async () => {
    let n = 0;
    const r = rng(SEED + 1 + p);
    while (running) {
      const to = pick(r, targets);
      const k = `p${p}-${n++}`;
      me.sent++;
      try {
        const a = await c.publish(to, { k, p, n });
        me.ok.push({ to, k, stream: a.stream === "inbox" ? `inbox:${to.slice(5)}` : a.stream, o: a.offset });
      } catch (e) {
        me.failed.push({ to, k, err: String(e) });
      }
    }
    await c.close();
  })();
  publishers.push(me);
}

// --- faults ------------------------------------------------------------------------------------
const started = Date.now();
const kills = Math.max(1, Math.floor(SECS / 60));
const killAt = Array.from({ length: kills }, (_, k) => ((k + 1) * SECS * 1000) / (kills + 1));
const kinds = { cut: 0, stall: 0, delay: 0, throttle: 0, refuse: 0 };
while (Date.now() - started < SECS * 1000) {
  await sleep(100 + rand() * 300);
  if (killAt.length > 0 && Date.now() - started >= killAt[0]) {
    killAt.shift();
    await server.restart();
    proxy.restarted(server.addr);
    continue;
  }
  const f = rand();
  kinds[f < 0.3 ? "cut" : f < 0.5 ? "stall" : f < 0.65 ? "delay" : f < 0.8 ? "throttle" : "refuse"]++;
  if (f < 0.3) proxy.cutAll();
  else if (f < 0.5) {
    proxy.stallAll();
    await sleep(1200);
    proxy.cutAll(); // the stalled sockets are dead to both sides by now
    proxy.unstallAll();
  } else if (f < 0.65) {
    proxy.delay(20 + Math.floor(rand() * 150));
    await sleep(800);
    proxy.delay(0);
  } else if (f < 0.8) {
    proxy.throttle(2000 + Math.floor(rand() * 30000));
    await sleep(800);
    proxy.throttle(0);
  } else {
    // Cut, then refuse the reconnects for a while.
    proxy.refuse(true);
    proxy.cutAll();
    await sleep(200 + rand() * 600);
    proxy.refuse(false);
  }
}
proxy.refuse(false);
proxy.delay(0);
proxy.throttle(0);
proxy.unstallAll();
running = false;
const pubTimeout = setTimeout(() => {
  console.error("chaos: publishers did not get every answer within 30 s");
  process.exit(1);
}, 30_000);
await Promise.all(publishers.map((p) => p.done));
clearTimeout(pubTimeout);

// --- checks ------------------------------------------------------------------------------------
async function history(stream) {
  const out = [];
  let after = 0;
  for (;;) {
    const r = await server.get(`/v1/streams/${stream}?after=${after}&limit=1000`);
    if (r.status !== 200) throw new Error(`history ${stream}: ${r.status}`);
    const items = r.body.items ?? [];
    if (items.length === 0) return out;
    for (const it of items) {
      out.push({ o: it.o, k: it.body?.k });
      after = it.o;
    }
  }
}
const stored = new Map();
let storedTwice = 0;
for (const t of targets) {
  const s = t.startsWith("user:") ? `inbox:${t.slice(5)}` : t;
  const h = await history(s);
  const keys = new Set();
  for (const x of h) {
    if (keys.has(x.k)) storedTwice++;
    keys.add(x.k);
  }
  stored.set(s, { keys, last: h.at(-1)?.o ?? 0 });
}
// Wait until every subscriber reached the end of each of its streams.
const streamsOf = (uid) => [...chans.map((c) => [`chan:${c}`, `chan:${c}`]), ["inbox", `inbox:${uid}`]];
const deadline = Date.now() + 30_000;
for (;;) {
  const behind = receivers.filter((r) => streamsOf(r.uid).some(([local, s]) => (r.got.get(local)?.last ?? 0) < stored.get(s).last && !r.gaps.some((g) => g.stream === local && g.to >= stored.get(s).last)));
  if (behind.length === 0) break;
  if (Date.now() > deadline) {
    console.error(`chaos: ${behind.map((r) => r.uid).join(", ")} did not catch up within 30 s`);
    break;
  }
  await sleep(50);
}

const oks = publishers.flatMap((p) => p.ok);
let lost = 0;
let announced = 0;
let delivered = 0;
for (const p of oks) {
  if (!stored.get(p.stream)?.keys.has(p.k)) {
    console.error(`lost by the server: ${JSON.stringify(p)}`);
    lost++;
  }
  const intended = p.to.startsWith("user:") ? receivers.filter((r) => r.uid === p.to.slice(5)) : receivers;
  for (const r of intended) {
    const local = p.to.startsWith("user:") ? "inbox" : p.to;
    if (r.got.get(local)?.keys.has(p.k)) delivered++;
    else if (r.gaps.some((g) => g.stream === local && g.from <= p.o && p.o <= g.to)) announced++;
    else {
      console.error(`lost for ${r.uid}: ${JSON.stringify(p)}`);
      lost++;
    }
  }
}
const duplicates = storedTwice + receivers.reduce((a, r) => a + r.dups, 0);
const disorder = receivers.reduce((a, r) => a + r.disorder, 0);
const failed = publishers.reduce((a, p) => a + p.failed.length, 0);
for (const p of publishers.flatMap((p) => p.failed).slice(0, 5)) console.error(`publish failed: ${JSON.stringify(p)}`);
for (const r of receivers) console.log(`${r.uid}: events ${JSON.stringify(r.events)}`);
for (const r of receivers) await r.client.close();
await proxy.close();
await server.stop();

const f = proxy.faults;
console.log(`sent: ${publishers.reduce((a, p) => a + p.sent, 0)} (ok ${oks.length}, failed ${failed})`);
console.log(`delivered: ${delivered}`);
console.log(`faults injected: ${proxy.totalFaults} (cuts ${f.cuts}, stalls ${f.stalls}, delays ${f.delays}, throttles ${f.throttles}, refused ${f.refused}, server kills ${f.kills})`);
console.log(`fault events: ${JSON.stringify(kinds)}`);
console.log(`announced as gaps: ${announced}`);
console.log(`lost: ${lost}`);
console.log(`duplicates: ${duplicates}`);
console.log(`order violations: ${disorder}`);
const pass = lost === 0 && duplicates === 0 && disorder === 0 && failed === 0 && oks.length > 0;
console.log(`chaos-js: ${pass ? "PASS" : "FAIL"}`);
process.exit(pass ? 0 : 1);
