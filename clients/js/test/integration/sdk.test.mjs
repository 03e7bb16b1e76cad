// The SDK against the real herald binary, with a fault-injecting proxy in between.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { rmSync } from "node:fs";
import {
  connect,
  ReconnectStrategy,
  ConnectError,
  EvictedError,
  RefusedError,
  ClosedError,
  InvalidError,
} from "../../dist/index.js";
import { FileDeviceStore } from "../../dist/node.js";
import { Herald, eventWaiter, take, expectNone, within, tempDir, WAIT } from "../support/herald.mjs";
import { Proxy } from "../support/proxy.mjs";

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});
async function server(env = {}, opts = {}) {
  const h = await Herald.start(env, opts);
  cleanups.push(() => h.stop());
  return h;
}
async function proxyTo(h) {
  const p = await Proxy.start(h.addr);
  cleanups.push(() => p.close());
  return p;
}
async function client(url, uid, extra = {}) {
  const e = eventWaiter();
  const c = await connect({
    url,
    devUid: uid,
    reconnect: ReconnectStrategy.fixed(50),
    connectTimeoutMs: 2000,
    onEvent: e.push,
    ...extra,
  });
  cleanups.push(() => c.close());
  return { c, d: c.deliveries(), e };
}
const offsets = (ds) => {
  const m = {};
  for (const d of ds) (m[d.stream] ??= []).push(d.offset);
  return m;
};
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("publish, subscribe and deliveries work as the protocol says", async () => {
  const s = await server();
  const alice = await client(s.wsUrl, "alice", { device: "a1" });
  const bob = await client(s.wsUrl, "bob", { device: "b1" });
  const sub = await alice.c.subscribe("room");
  assert.deepEqual(sub, { stream: "chan:room", offset: 0 });
  const p1 = await bob.c.publish("chan:room", { text: "hello room" });
  assert.equal(p1.stream, "chan:room");
  assert.equal(p1.offset, 1);
  assert.equal(p1.dup, false);
  const p2 = await bob.c.publish("user:alice", { text: "hi alice" });
  assert.equal(p2.stream, "inbox");
  assert.equal(p2.online, 1, "alice is connected");
  const got = await take(alice.d, 2);
  const room = got.find((d) => d.stream === "chan:room");
  const inbox = got.find((d) => d.stream === "inbox");
  assert.deepEqual([room.id, room.from, room.body], [p1.id, "bob", { text: "hello room" }]);
  assert.deepEqual([inbox.id, inbox.from, inbox.body], [p2.id, "bob", { text: "hi alice" }]);
  assert.ok(inbox.ts > 0);
  // An err answer is a typed error with the server's code.
  const big = "x".repeat(70 * 1024);
  const e = await bob.c.publish("chan:room", big).catch((e) => e);
  assert.equal(e.code, "too_large", String(e));
});

test("messages waiting for a user are delivered when it connects, in order", async () => {
  const s = await server();
  for (let i = 1; i <= 5; i++) await s.publish("user:olga", i);
  const olga = await client(s.wsUrl, "olga", { device: "o1" });
  const got = await take(olga.d, 5);
  assert.deepEqual(got.map((d) => d.body), [1, 2, 3, 4, 5]);
  assert.deepEqual(offsets(got).inbox, range(1, 5));
});

test("a network cut resumes with nothing lost or duplicated", async () => {
  const s = await server();
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1" });
  const bob = await client(s.wsUrl, "bob", { device: "b1" });
  await alice.c.subscribe("room");
  const got = [];
  for (let i = 1; i <= 3; i++) await bob.c.publish("chan:room", i);
  got.push(...(await take(alice.d, 3)));
  // Alice publishes while the cut happens: her publishes resolve once, whatever happened.
  const mine = [1, 2, 3].map((i) => alice.c.publish("user:bob", `a${i}`));
  proxy.cutAll();
  await alice.e.until((e) => e.type === "disconnected");
  for (let i = 4; i <= 6; i++) await bob.c.publish("chan:room", i);
  const seen = await alice.e.until((e) => e.type === "connected");
  assert.deepEqual(seen.at(-1), { type: "connected", resumed: true });
  assert.ok(seen.some((e) => e.type === "reconnecting" && e.attempt === 1), JSON.stringify(seen));
  got.push(...(await take(alice.d, 3)));
  await expectNone(alice.d, 300);
  assert.deepEqual(offsets(got)["chan:room"], range(1, 6));
  const answers = await Promise.all(mine);
  assert.deepEqual(new Set(answers.map((a) => a.offset)).size, 3);
  const bobInbox = await s.history("user:bob".replace("user:", "inbox:"));
  assert.equal(bobInbox.filter((m) => typeof m.body === "string" && m.body.startsWith("a")).length, 3, "each publish stored once");
});

test("repeated cuts during traffic lose and duplicate nothing", async () => {
  const s = await server();
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1" });
  const pub = await client(proxy.wsUrl, "pat", { device: "p1" });
  await alice.c.subscribe("busy");
  const N = 60;
  const sends = [];
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < N / 4; i++) sends.push(pub.c.publish("chan:busy", sends.length));
    // Cut once the round's first publish is answered, with the rest still in flight.
    await within(sends[sends.length - N / 4], "a publish of the round");
    proxy.cutAll();
  }
  const answers = await within(Promise.all(sends), "every publish resolves");
  assert.equal(new Set(answers.map((a) => a.offset)).size, N);
  const got = await take(alice.d, N);
  await expectNone(alice.d, 300);
  assert.deepEqual(offsets(got)["chan:busy"], range(1, N));
  assert.equal((await s.history("chan:busy")).length, N, "stored once each");
  assert.ok(proxy.faults.cuts >= 4);
});

test("a half-open connection is detected by the heartbeat watchdog", async () => {
  const s = await server({ SESSION__HEARTBEAT_MS: "300" });
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1", heartbeatGraceMs: 300 });
  await alice.c.subscribe("room");
  proxy.stallAll();
  await s.publish("chan:room", "during the stall");
  const seen = await alice.e.until((e) => e.type === "disconnected");
  assert.match(seen.at(-1).reason, /^heartbeat timeout: nothing heard for 600ms$/);
  const after = await alice.e.until((e) => e.type === "connected");
  assert.deepEqual(after.at(-1), { type: "connected", resumed: true });
  const [d] = await take(alice.d, 1);
  assert.equal(d.body, "during the stall");
});

test("resume after a kill -9 and restart of the server", async () => {
  const s = await server();
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1" });
  await alice.c.subscribe("room");
  await s.publish("chan:room", 1);
  await take(alice.d, 1);
  await s.kill();
  await alice.e.until((e) => e.type === "disconnected");
  const queued = alice.c.publish("chan:room", "sent while down");
  await s.restart();
  proxy.restarted(s.addr);
  const seen = await alice.e.until((e) => e.type === "connected");
  assert.deepEqual(seen.at(-1), { type: "connected", resumed: true }, "sessions survive a restart");
  assert.equal((await queued).offset, 2);
  await s.publish("chan:room", 3);
  const got = await take(alice.d, 2);
  assert.deepEqual(got.map((d) => d.offset), [2, 3]);
});

test("a failed resume is reported, resubscribes and replays what was missed", async () => {
  const s = await server();
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1", reconnectTimeoutMs: 1 });
  await alice.c.subscribe("room");
  for (let i = 1; i <= 3; i++) await s.publish("chan:room", i);
  const got = await take(alice.d, 3);
  proxy.refuse(true);
  proxy.cutAll();
  await alice.e.until((e) => e.type === "reconnecting");
  for (let i = 4; i <= 6; i++) await s.publish("chan:room", i);
  // A publish made while disconnected waits and is sent to the new session.
  const queued = alice.c.publish("chan:room", "queued");
  proxy.refuse(false);
  const seen = await alice.e.until((e) => e.type === "resumeFailed");
  assert.deepEqual(seen.at(-1), { type: "resumeFailed", reason: "expired" });
  assert.ok(seen.some((e) => e.type === "connected" && e.resumed === false));
  assert.equal((await queued).offset, 7);
  got.push(...(await take(alice.d, 4)));
  await expectNone(alice.d, 300);
  assert.deepEqual(offsets(got)["chan:room"], range(1, 7));
  assert.equal((await s.history("chan:room")).length, 7);
});

test("a failed resume reports a gap for what retention trimmed", async () => {
  const s = await server({ RETENTION__CHANNEL_MAX_MESSAGES: "3", RETENTION__TRIM_INTERVAL_MS: "100" });
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1", reconnectTimeoutMs: 0 });
  await alice.c.subscribe("room");
  await s.publish("chan:room", 1);
  await s.publish("chan:room", 2);
  const got = await take(alice.d, 2);
  proxy.refuse(true);
  proxy.cutAll();
  await alice.e.until((e) => e.type === "reconnecting");
  for (let i = 3; i <= 8; i++) await s.publish("chan:room", i);
  await s.waitFor("/v1/streams/chan:room", (v) => v.first === 6, "trimmed to 6..8");
  proxy.refuse(false);
  const seen = await alice.e.until((e) => e.type === "gap");
  assert.deepEqual(seen.at(-1), { type: "gap", stream: "chan:room", from: 3, to: 5 });
  assert.ok(!seen.some((e) => e.type === "resumeFailed"), "reconnectTimeoutMs 0 asks for no resume");
  got.push(...(await take(alice.d, 3)));
  assert.deepEqual(offsets(got)["chan:room"], [1, 2, 6, 7, 8]);
});

test("eviction by a twin stops the client without reconnecting; the twin is never evicted back", async () => {
  const s = await server({ IDENTITY__POLICY: "single" });
  const first = await client(s.wsUrl, "alice", { device: "a1" });
  const second = await client(s.wsUrl, "alice", { device: "a2" });
  const seen = await first.e.until((e) => e.type === "evicted");
  assert.equal(seen.at(-1).reason, "replaced");
  assert.equal(seen.at(-1).by.conn, second.c.session().conn);
  await within(first.c.whenClosed(), "closed");
  assert.deepEqual(first.e.seen.at(-1), { type: "closed" });
  const err = await first.c.publish("user:bob", 1).catch((e) => e);
  assert.ok(err instanceof EvictedError, String(err));
  assert.match(err.message, /will not reconnect/);
  await assert.rejects(first.c.subscribe("x"), EvictedError);
  // The survivor keeps working.
  await second.c.publish("user:alice", "still here");
  assert.equal((await take(second.d, 1))[0].body, "still here");
  const ev = await s.get("/v1/events?type=eviction");
  assert.equal(ev.body.items.length, 1, JSON.stringify(ev.body));
  assert.deepEqual(second.e.seen.map((e) => e.type), ["connecting", "connected"], "the twin is never evicted back");
});

test("a session replaced while disconnected learns it on resume and stops", async () => {
  const s = await server({ IDENTITY__POLICY: "single" });
  const proxy = await proxyTo(s);
  const first = await client(proxy.wsUrl, "gus", { device: "g1" });
  proxy.refuse(true);
  proxy.cutAll();
  await first.e.until((e) => e.type === "reconnecting");
  const second = await client(s.wsUrl, "gus", { device: "g2" });
  proxy.refuse(false);
  const seen = await first.e.until((e) => e.type === "evicted");
  assert.equal(seen.at(-1).reason, "replaced", JSON.stringify(seen));
  await within(first.c.whenClosed(), "closed");
  assert.deepEqual(first.e.seen.at(-1), { type: "closed" }, "no fresh login that would evict the twin back");
  await assert.rejects(first.c.publish("user:gus", 1), EvictedError);
  const ev = await s.get("/v1/events?type=eviction");
  assert.equal(ev.body.items.length, 1, JSON.stringify(ev.body));
  assert.deepEqual(second.e.seen.map((e) => e.type), ["connecting", "connected"]);
});

test("a kick stops the client (evicted kicked), no reconnect", async () => {
  const s = await server();
  const a = await client(s.wsUrl, "kim", { device: "k1" });
  const r = await s.del(`/v1/sessions/${a.c.session().session}`);
  assert.ok(r.status < 300, JSON.stringify(r));
  const seen = await a.e.until((e) => e.type === "closed");
  assert.ok(seen.some((e) => e.type === "evicted" && e.reason === "kicked"), JSON.stringify(seen));
  assert.ok(a.c.stopped() instanceof EvictedError);
});

test("a full recovery buffer makes publish wait until the server is back", async () => {
  const s = await server();
  const proxy = await proxyTo(s);
  const alice = await client(proxy.wsUrl, "alice", { device: "a1", recoveryBuffer: 2 });
  await s.kill();
  await alice.e.until((e) => e.type === "disconnected");
  let finished = 0;
  const pubs = [0, 1, 2, 3, 4].map((i) => alice.c.publish("chan:buf", i).then((r) => (finished++, r)));
  // Several reconnect attempts fail while the server is down; the buffer stays at 2.
  await alice.e.until((e) => e.type === "reconnecting" && e.attempt === 3);
  assert.equal(alice.c.unanswered(), 2, "never more than the buffer");
  assert.equal(finished, 0, "publish waits, it does not fail or drop");
  await s.restart();
  proxy.restarted(s.addr);
  const seen = await alice.e.until((e) => e.type === "connected");
  assert.deepEqual(seen.at(-1), { type: "connected", resumed: true });
  const attempts = seen.filter((e) => e.type === "reconnecting").map((e) => {
    assert.equal(e.nextIn, 50, "the fixed strategy");
    return e.attempt;
  });
  assert.deepEqual(attempts, range(1, attempts.length));
  const offs = (await within(Promise.all(pubs), "all publishes")).map((p) => p.offset).sort((a, b) => a - b);
  assert.deepEqual(offs, [1, 2, 3, 4, 5]);
  assert.equal((await s.history("chan:buf")).length, 5);
  assert.equal(alice.c.unanswered(), 0);
});

test("acks are sent once the app has taken the message", async () => {
  const s = await server();
  const alice = await client(s.wsUrl, "alice", { device: "a1" });
  const { id } = await s.publish("user:alice", "m");
  const path = `/v1/messages/${id}`;
  await s.waitFor(path, (v) => v.summary.sent === 1, "sent");
  // Sent, not taken by the app: not acknowledged. The ack interval (50 ms) is long past once
  // a later message, published after, was acknowledged on another device.
  const other = await client(s.wsUrl, "zed", { device: "z1" });
  const z = await s.publish("user:zed", "z");
  await take(other.d, 1);
  await s.waitFor(`/v1/messages/${z.id}`, (v) => v.summary.acked === 1, "zed acked");
  assert.equal((await s.get(path)).body.summary.acked, 0);
  assert.equal((await take(alice.d, 1))[0].id, id);
  const v = await s.waitFor(path, (v) => v.summary.acked === 1, "acked");
  assert.equal(v.recipients[0].device, "a1");
  // A batch, acknowledged through the cumulative ack of the last one.
  let last;
  for (let i = 0; i < 100; i++) last = (await s.publish("user:alice", i)).id;
  await take(alice.d, 100);
  await s.waitFor(`/v1/messages/${last}`, (v) => v.summary.acked === 1, "batch acked");
});

test("the device id and inbox cursor survive a process restart (FileDeviceStore)", async () => {
  const s = await server();
  const dir = tempDir("herald-js-device-");
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const first = await connect({ url: s.wsUrl, devUid: "dora", deviceStore: new FileDeviceStore(dir) });
  const device = first.session().device;
  await s.publish("user:dora", 1);
  await s.publish("user:dora", 2);
  const it = first.deliveries();
  await take(it, 2);
  await s.waitFor("/v1/sessions?uid=dora", () => true);
  // Let the ack reach the server before the process "exits" (close ends the session with bye).
  const { id } = (await s.history("inbox:dora")).at(-1);
  await s.waitFor(`/v1/messages/${id}`, (v) => v.summary.acked === 1, "acked");
  await first.close();
  await s.publish("user:dora", 3);
  const second = await connect({ url: s.wsUrl, devUid: "dora", deviceStore: new FileDeviceStore(dir) });
  cleanups.push(() => second.close());
  assert.equal(second.session().device, device, "same device from the file");
  const got = await take(second.deliveries(), 1);
  assert.equal(got[0].body, 3, "continues after the acknowledged position");
});

test("close sends bye, ends the session at once, and later requests fail", async () => {
  const s = await server();
  const erin = await client(s.wsUrl, "erin", { device: "e1" });
  const session = erin.c.session().session;
  await erin.c.close();
  assert.deepEqual(erin.e.seen.at(-1), { type: "closed" });
  await assert.rejects(erin.c.publish("user:erin", 1), ClosedError);
  await s.waitFor("/v1/sessions?uid=erin", (v) => v.items.every((i) => i.id !== session), "session gone");
});

test("a refused login fails connect with the server's code", async () => {
  const s = await server({ IDENTITY__POLICY: "reject_new" });
  await client(s.wsUrl, "fay", { device: "f1" });
  const err = await connect({ url: s.wsUrl, devUid: "fay", device: "f2" }).catch((e) => e);
  assert.ok(err instanceof RefusedError, String(err));
  assert.equal(err.code, "identity_in_use");
});

test("connect to nothing fails at once; credentials are required", async () => {
  const s = await server();
  const addr = s.addr;
  await s.kill();
  const err = await connect({ url: `ws://${addr}/v1/ws`, devUid: "ivy" }).catch((e) => e);
  assert.ok(err instanceof ConnectError, String(err));
  await assert.rejects(connect({ url: `ws://${addr}/v1/ws` }), InvalidError);
});

test("a server that accepts but never answers: the first attempt times out with ConnectError, later ones retry", async () => {
  const net = await import("node:net");
  const held = [];
  const silent = net.createServer((sock) => held.push(sock));
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  cleanups.push(() => {
    for (const s of held) s.destroy();
    return new Promise((r) => silent.close(r));
  });
  const url = `ws://127.0.0.1:${silent.address().port}/v1/ws`;
  const err = await connect({ url, devUid: "ned", connectTimeoutMs: 300 }).catch((e) => e);
  assert.ok(err instanceof ConnectError, String(err));
  assert.match(err.message, /no welcome within 300ms/);
  // Once connected, a silent server during a reconnect is one failed attempt among others.
  const s = await server();
  const proxy = await proxyTo(s);
  const ned = await client(proxy.wsUrl, "ned", { device: "n1", connectTimeoutMs: 300 });
  proxy.setUpstream(`127.0.0.1:${silent.address().port}`);
  proxy.cutAll();
  await ned.e.until((e) => e.type === "reconnecting" && e.attempt === 2, "a timed-out attempt");
  proxy.setUpstream(s.addr);
  const seen = await ned.e.until((e) => e.type === "connected");
  assert.deepEqual(seen.at(-1), { type: "connected", resumed: true });
});

function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

test("a token logs in, getToken is called on every (re)connect, and a bad token is refused", async () => {
  const SECRET = "sdk-test-secret-0123456789-abcdefghij";
  const s = await server({ AUTH__HS256_SECRET: SECRET }, { dev: false });
  const proxy = await proxyTo(s);
  const exp = Math.floor(Date.now() / 1000) + 600;
  const issued = [];
  const c = await connect({
    url: proxy.wsUrl,
    device: "h1",
    reconnect: ReconnectStrategy.fixed(50),
    getToken: async () => {
      const t = jwt(SECRET, { sub: "hana", exp: exp + issued.length });
      issued.push(t);
      return t;
    },
  });
  cleanups.push(() => c.close());
  const e = eventWaiter();
  c.onEvent(e.push);
  assert.equal(c.session().uid, "hana");
  assert.equal((await c.publish("user:hana", 1)).offset, 1);
  proxy.cutAll();
  await e.until((x) => x.type === "connected");
  assert.equal(issued.length, 2, "a fresh token for the reconnect");
  assert.notEqual(issued[0], issued[1]);
  assert.equal((await c.publish("user:hana", 2)).offset, 2);
  const err = await connect({ url: s.wsUrl, token: jwt("another-secret-0123456789-abcdefghijkl", { sub: "hana", exp }) }).catch((e) => e);
  assert.ok(err instanceof RefusedError, String(err));
  assert.equal(err.code, "unauthorized");
});
