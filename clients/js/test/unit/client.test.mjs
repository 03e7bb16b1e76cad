// The client's state machine against a scripted server, with fake timers (node:test
// mock.timers): no sleeps, every delay is advanced by hand.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  connect,
  ReconnectStrategy,
  ConnectError,
  EvictedError,
  RefusedError,
  ServerError,
  ClosedError,
  InvalidError,
  TabDeviceStore,
} from "../../dist/index.js";
import { FakeServer, settle, started, types, welcome } from "./fake.mjs";

function fakeTime(t) {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  return (ms) => t.mock.timers.tick(ms);
}

test("connect says hello with uid, device and reconnect_timeout_ms, and reports connected", async (t) => {
  fakeTime(t);
  const srv = new FakeServer();
  const { client, events, ws } = await started(connect, srv, { device: "d1", reconnectTimeoutMs: 1234 });
  const hello = ws.sent[0];
  assert.deepEqual(hello, { t: "hello", v: 1, reconnect_timeout_ms: 1234, uid: "alice", device: "d1" });
  assert.deepEqual(events, [{ type: "connecting" }, { type: "connected", resumed: false }]);
  assert.deepEqual(client.session(), { session: "S1", uid: "alice", device: "d1", conn: "C1" });
  await client.close();
});

test("publish resolves only on the server's ok, with an idempotency id", async (t) => {
  fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv);
  let done = null;
  const p = client.publish("user:bob", { text: "hi" }).then((r) => (done = r));
  await settle();
  const [pub] = ws.sentOf("pub");
  assert.equal(pub.seq, 1);
  assert.equal(pub.to, "user:bob");
  assert.deepEqual(pub.body, { text: "hi" });
  assert.match(pub.id, /^[0-9a-f]{32}$/);
  assert.equal(done, null, "not before the answer");
  assert.equal(client.unanswered(), 1);
  ws.frames({ t: "ok", seq: 1, id: "m_1", s: "inbox", o: 17, online: 1 });
  await p;
  assert.deepEqual(done, { id: "m_1", stream: "inbox", offset: 17, online: 1, dup: false });
  assert.equal(client.unanswered(), 0);
  await client.close();
});

test("an err answer rejects with a typed error carrying code and msg; bad arguments are refused locally", async (t) => {
  fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv);
  const p = client.publish("chan:x", 1);
  await settle();
  ws.frames({ t: "err", seq: 1, code: "forbidden", msg: "not allowed to publish to chan:x" });
  const e = await p.catch((e) => e);
  assert.ok(e instanceof ServerError);
  assert.equal(e.code, "forbidden");
  assert.equal(e.msg, "not allowed to publish to chan:x");
  await assert.rejects(client.publish("bob", 1), InvalidError);
  await assert.rejects(client.subscribe("bad name"), InvalidError);
  await assert.rejects(client.publish("chan:ok", undefined), InvalidError);
  await client.close();
});

test("a cut resumes: backoff event, resume in hello, everything above acked_seq resent with the same id", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, events, ws } = await started(connect, srv, { reconnect: ReconnectStrategy.fixed(300) });
  const p1 = client.publish("chan:a", 1);
  const p2 = client.publish("chan:a", 2);
  await settle();
  const [a, b] = ws.sentOf("pub");
  ws.drop(1006);
  await settle();
  assert.deepEqual(types(events).slice(2), ["disconnected", "reconnecting"]);
  assert.deepEqual(events[3], { type: "reconnecting", attempt: 1, nextIn: 300 });
  tick(299);
  await settle();
  assert.equal(srv.sockets.length, 1, "waits out the delay");
  tick(1);
  await settle();
  assert.equal(srv.sockets.length, 2);
  const ws2 = srv.last;
  ws2.open();
  assert.deepEqual(ws2.sent[0].resume, { session: "S1", key: "K1" });
  // The server processed seq 1 before the cut: both are resent with their own seq and id.
  ws2.frames(welcome({ resumed: true, acked_seq: 1, conn: "C2" }));
  await settle();
  const resent = ws2.sentOf("pub");
  assert.deepEqual(
    resent.map((f) => [f.seq, f.id]),
    [
      [1, a.id],
      [2, b.id],
    ],
  );
  ws2.frames({ t: "ok", seq: 1, id: "m1", s: "chan:a", o: 1 }, { t: "ok", seq: 2, id: "m2", s: "chan:a", o: 2 });
  assert.equal((await p1).offset, 1);
  assert.equal((await p2).offset, 2);
  assert.deepEqual(events.at(-1), { type: "connected", resumed: true });
  // The next request continues above acked_seq.
  const p3 = client.publish("chan:a", 3);
  await settle();
  assert.equal(ws2.sentOf("pub").at(-1).seq, 3);
  ws2.frames({ t: "ok", seq: 3, id: "m3", s: "chan:a", o: 3 });
  await p3;
  await client.close();
});

test("a bare dup is 'outcome unknown': republished with the same id and a new seq", async (t) => {
  fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv);
  const p = client.publish("chan:a", "x");
  await settle();
  const first = ws.sentOf("pub")[0];
  ws.frames({ t: "ok", seq: 1, dup: true });
  await settle();
  const again = ws.sentOf("pub")[1];
  assert.equal(again.id, first.id, "same idempotency id");
  assert.equal(again.seq, 2, "new seq");
  ws.frames({ t: "ok", seq: 2, id: "m9", s: "chan:a", o: 9, dup: true });
  assert.deepEqual(await p, { id: "m9", stream: "chan:a", offset: 9, dup: true });
  await client.close();
});

test("bad_frame for a resent request is reissued under a new seq, at most 3 times", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv, { reconnect: ReconnectStrategy.fixed(0) });
  const p = client.publish("chan:a", "x");
  await settle();
  ws.drop();
  await settle();
  tick(0);
  await settle();
  const ws2 = srv.last;
  ws2.open();
  ws2.frames(welcome({ resumed: true, acked_seq: 0 }));
  await settle();
  for (let i = 0; i < 3; i++) {
    const seq = ws2.sentOf("pub").at(-1).seq;
    ws2.frames({ t: "err", seq, code: "bad_frame", msg: "seq already being processed" });
    await settle();
  }
  assert.equal(ws2.sentOf("pub").length, 4);
  ws2.frames({ t: "err", seq: ws2.sentOf("pub").at(-1).seq, code: "bad_frame", msg: "again" });
  await assert.rejects(p, (e) => e instanceof ServerError && e.code === "bad_frame");
  await client.close();
});

test("deliveries are handed on once, in order, across a resume that redelivers", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv, { reconnect: ReconnectStrategy.fixed(10) });
  const it = client.deliveries();
  const msg = (o) => ({ t: "msg", s: "chan:a", o, id: `m${o}`, from: "bob", ts: 1, body: { n: o } });
  ws.frames(msg(1), msg(2));
  ws.drop();
  await settle();
  tick(10);
  await settle();
  srv.last.open();
  srv.last.frames(welcome({ resumed: true }), msg(1), msg(2), msg(3));
  const got = [];
  for (let i = 0; i < 3; i++) got.push((await it.next()).value);
  assert.deepEqual(
    got.map((d) => d.offset),
    [1, 2, 3],
  );
  assert.deepEqual(got[2], { stream: "chan:a", offset: 3, id: "m3", from: "bob", ts: 1, body: { n: 3 } });
  assert.equal(it.tryNext(), undefined, "nothing twice");
  await client.close();
});

test("acks: sent ack_interval after the app took a message, at once after ack_batch, never before taking", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv, { ackIntervalMs: 50, ackBatch: 4 });
  const it = client.deliveries();
  const msg = (o) => ({ t: "msg", s: "inbox", o, id: `m${o}`, from: "bob", ts: 1, body: o });
  ws.frames(msg(1), msg(2));
  tick(1000);
  await settle();
  assert.deepEqual(ws.sentOf("ack"), [], "not acked while the app has not taken it");
  await it.next();
  tick(49);
  assert.deepEqual(ws.sentOf("ack"), []);
  tick(1);
  assert.deepEqual(ws.sentOf("ack"), [{ t: "ack", s: "inbox", o: 1 }]);
  ws.frames(msg(3), msg(4), msg(5));
  for (let i = 0; i < 4; i++) await it.next();
  assert.deepEqual(ws.sentOf("ack").at(-1), { t: "ack", s: "inbox", o: 5 }, "the batch flushes at once");
  await client.close();
});

test("onDelivery: each delivery is acknowledged once the callback's promise resolved", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv, { ackIntervalMs: 10 });
  let release;
  const seen = [];
  client.onDelivery((d) => {
    seen.push(d.offset);
    return new Promise((r) => (release = r));
  });
  assert.throws(() => client.deliveries(), InvalidError, "taken once");
  ws.frames({ t: "msg", s: "inbox", o: 1, id: "m1", from: "b", ts: 1, body: 1 }, { t: "msg", s: "inbox", o: 2, id: "m2", from: "b", ts: 1, body: 2 });
  await settle();
  assert.deepEqual(seen, [1], "one at a time");
  release();
  await settle();
  assert.deepEqual(seen, [1, 2]);
  tick(10);
  assert.deepEqual(ws.sentOf("ack"), [{ t: "ack", s: "inbox", o: 1 }], "only what the callback finished");
  await client.close();
});

test("the heartbeat watchdog drops a silent connection after heartbeat_ms + grace", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, events, ws } = await started(connect, srv, { heartbeatGraceMs: 500 }, { heartbeat_ms: 1000 });
  tick(800);
  ws.frames({ t: "ping" });
  assert.deepEqual(ws.sentOf("pong"), [{ t: "pong" }]);
  tick(1499);
  await settle();
  assert.equal(types(events).includes("disconnected"), false, "any frame counts as life");
  tick(1);
  await settle();
  const d = events.find((e) => e.type === "disconnected");
  assert.equal(d.reason, "heartbeat timeout: nothing heard for 1500ms");
  assert.equal(ws.closedByClient, 1000, "the dead socket is closed");
  await client.close();
});

test("evicted stops the client: evicted, closed, no reconnect, later requests fail", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, events, ws } = await started(connect, srv);
  const pending = client.publish("chan:a", 1);
  await settle();
  ws.frames({ t: "evicted", reason: "replaced", by: { conn: "C2", addr: "127.0.0.1:9" } });
  ws.drop(4009);
  await assert.rejects(pending, EvictedError);
  assert.deepEqual(events.slice(-2), [
    { type: "evicted", reason: "replaced", by: { conn: "C2", addr: "127.0.0.1:9" } },
    { type: "closed" },
  ]);
  tick(60_000);
  await settle();
  assert.equal(srv.sockets.length, 1, "no reconnect after an eviction");
  const e = await client.publish("chan:a", 2).catch((e) => e);
  assert.ok(e instanceof EvictedError);
  assert.match(e.message, /will not reconnect/);
  assert.equal(client.stopped(), e);
});

for (const code of [4000, 4003, 4010]) {
  test(`close ${code} after the welcome stops the client without reconnecting`, async (t) => {
    const tick = fakeTime(t);
    const srv = new FakeServer();
    const { client, events, ws } = await started(connect, srv);
    ws.drop(code, "bye");
    await settle();
    tick(60_000);
    await settle();
    assert.equal(srv.sockets.length, 1);
    assert.deepEqual(events.at(-1), { type: "closed" });
    assert.ok(client.stopped() instanceof RefusedError);
    assert.equal(client.stopped().code, `close ${code}`);
  });
}

test("a refused first login rejects connect with the server's code, and does not retry", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const p = connect({ url: "ws://fake", devUid: "alice", WebSocket: srv.WebSocket });
  await settle();
  srv.last.open();
  srv.last.frames({ t: "err", code: "identity_in_use", msg: "alice has a live session" });
  srv.last.drop(4010);
  const e = await p.catch((e) => e);
  assert.ok(e instanceof RefusedError);
  assert.equal(e.code, "identity_in_use");
  tick(60_000);
  await settle();
  assert.equal(srv.sockets.length, 1);
});

test("a first attempt that fails rejects with ConnectError and is not retried", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const p = connect({ url: "ws://fake", devUid: "alice", WebSocket: srv.WebSocket, connectTimeoutMs: 2000 });
  await settle();
  srv.last.drop(1006);
  const e = await p.catch((e) => e);
  assert.ok(e instanceof ConnectError, String(e));
  assert.match(e.message, /closed 1006 before welcome/);
  // And a welcome that never comes is a timeout.
  const p2 = connect({ url: "ws://fake", devUid: "alice", WebSocket: srv.WebSocket, connectTimeoutMs: 2000 });
  await settle();
  srv.last.open();
  tick(2000);
  const e2 = await p2.catch((e) => e);
  assert.match(e2.message, /no welcome within 2000ms/);
  assert.equal(srv.sockets.length, 2);
});

test("getToken is called on every (re)connect", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  let n = 0;
  const { client, ws } = await started(connect, srv, {
    devUid: undefined,
    getToken: async () => `jwt-${++n}`,
    reconnect: ReconnectStrategy.fixed(5),
  });
  assert.equal(ws.sent[0].token, "jwt-1");
  ws.drop();
  await settle();
  tick(5);
  await settle();
  srv.last.open();
  assert.equal(srv.last.sent[0].token, "jwt-2");
  await client.close();
});

test("a full recovery buffer makes publish wait; nothing is dropped, all complete later", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv, { recoveryBuffer: 2, reconnect: ReconnectStrategy.fixed(100) });
  ws.drop();
  await settle();
  const done = [];
  const pubs = [0, 1, 2, 3, 4].map((i) => client.publish("chan:buf", i).then((r) => done.push(r.offset)));
  await settle();
  assert.equal(client.unanswered(), 2, "never more than the buffer");
  assert.deepEqual(done, []);
  tick(100);
  await settle();
  const ws2 = srv.last;
  ws2.open();
  ws2.frames(welcome({ resumed: true }));
  await settle();
  // Answer every pub as it comes; the waiting ones are sent as slots free up.
  for (let o = 1; o <= 5; o++) {
    const f = ws2.sentOf("pub").find((x) => x.body === o - 1);
    assert.ok(f, `pub ${o - 1} sent`);
    ws2.frames({ t: "ok", seq: f.seq, id: `m${o}`, s: "chan:buf", o });
    await settle();
    assert.ok(client.unanswered() <= 2);
  }
  await Promise.all(pubs);
  assert.deepEqual(done, [1, 2, 3, 4, 5]);
  assert.equal(client.unanswered(), 0);
  await client.close();
});

test("a failed resume is reported and recovered: resubscribe from the last offset handed on, resend under new seqs", async (t) => {
  const tick = fakeTime(t);
  const srv = new FakeServer();
  const { client, events, ws } = await started(connect, srv, { reconnect: ReconnectStrategy.fixed(1) });
  const it = client.deliveries();
  const sub = client.subscribe("room");
  await settle();
  ws.frames({ t: "ok", seq: 1, s: "chan:room", o: 10 });
  await sub;
  ws.frames({ t: "msg", s: "chan:room", o: 11, id: "m11", from: "b", ts: 1, body: 11 });
  assert.equal((await it.next()).value.offset, 11);
  const p = client.publish("chan:room", "queued");
  await settle();
  ws.drop();
  await settle();
  tick(1);
  await settle();
  const ws2 = srv.last;
  ws2.open();
  ws2.frames(welcome({ session: "S2", key: "K2", resumed: false, resume_error: "expired" }));
  await settle();
  assert.deepEqual(types(events).slice(-2), ["connected", "resumeFailed"]);
  assert.deepEqual(events.at(-1), { type: "resumeFailed", reason: "expired" });
  const [resub, repub] = [ws2.sentOf("sub")[0], ws2.sentOf("pub")[0]];
  assert.deepEqual(resub, { t: "sub", seq: 3, chan: "room", from: 11 });
  assert.equal(repub.seq, 4);
  ws2.frames(
    { t: "ok", seq: 3, s: "chan:room", o: 12 },
    { t: "msg", s: "chan:room", o: 11, id: "m11", from: "b", ts: 1, body: 11 },
    { t: "msg", s: "chan:room", o: 12, id: "m12", from: "b", ts: 1, body: 12 },
    { t: "gap", s: "chan:room", from: 13, to: 14, reason: "retention" },
    { t: "gap", s: "chan:room", from: 13, to: 14, reason: "retention" },
    { t: "ok", seq: 4, id: "m15", s: "chan:room", o: 15 },
  );
  assert.equal((await p).offset, 15);
  assert.equal((await it.next()).value.offset, 12, "11 is not handed on twice");
  assert.equal(events.filter((e) => e.type === "gap").length, 1, "a gap is reported once");
  assert.deepEqual(events.find((e) => e.type === "gap"), { type: "gap", stream: "chan:room", from: 13, to: 14 });
  await client.close();
});

test("close sends bye, fails waiting requests, and closed is the last event; the iterator ends", async (t) => {
  fakeTime(t);
  const srv = new FakeServer();
  const { client, ws } = await started(connect, srv);
  const evs = client.events();
  const pending = client.publish("chan:a", 1);
  await settle();
  await client.close();
  assert.deepEqual(ws.sent.at(-1), { t: "bye" });
  await assert.rejects(pending, ClosedError);
  await assert.rejects(client.publish("chan:a", 2), ClosedError);
  const all = [];
  for await (const e of evs) all.push(e.type);
  assert.deepEqual(all, ["connecting", "connected", "closed"]);
});

function fakeStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k), m };
}
function fakeLocks() {
  const held = new Set();
  return {
    held,
    request(name, opts, cb) {
      if (held.has(name)) {
        if (opts.ifAvailable) return Promise.resolve(cb(null));
        return new Promise((_, reject) => opts.signal.addEventListener("abort", () => reject(new Error("aborted"))));
      }
      held.add(name);
      return Promise.resolve(cb({ name }));
    },
  };
}

test("TabDeviceStore: a reload keeps the tab's device and session; a duplicated tab gets its own", async (t) => {
  const tick = fakeTime(t);
  const storage = fakeStorage();
  const locks = fakeLocks();
  const srv = new FakeServer();
  const tab = new TabDeviceStore({ storage, locks });
  const { client, ws } = await started(connect, srv, { deviceStore: tab }, { device: "dev-A" });
  assert.equal(ws.sent[0].device, undefined, "a new tab asks the server for a device");
  await settle();
  ws.frames({ t: "msg", s: "inbox", o: 4, id: "m4", from: "b", ts: 1, body: 4 });
  await client.deliveries().next();
  assert.equal(storage.getItem("herald:device"), "dev-A");
  assert.deepEqual(JSON.parse(storage.getItem("herald:session")), { session: "S1", key: "K1", positions: { inbox: 4 } });

  // The reload: the old page's lock is gone, a new client reads the same sessionStorage.
  locks.held.clear();
  const srv2 = new FakeServer();
  const again = await started(connect, srv2, { deviceStore: new TabDeviceStore({ storage, locks }) }, { device: "dev-A", resumed: true });
  assert.equal(again.ws.sent[0].device, "dev-A");
  assert.deepEqual(again.ws.sent[0].resume, { session: "S1", key: "K1" });
  const its = again.client.deliveries();
  again.ws.frames({ t: "msg", s: "inbox", o: 4, id: "m4", from: "b", ts: 1, body: 4 }, { t: "msg", s: "inbox", o: 5, id: "m5", from: "b", ts: 1, body: 5 });
  assert.equal((await its.next()).value.offset, 5, "what the page took before the reload is not handed on again");
  assert.deepEqual(again.ws.sentOf("ack")[0], { t: "ack", s: "inbox", o: 4 }, "its position is acked again");

  // A duplicate of the tab copies sessionStorage while the original still holds the lock.
  const copy = fakeStorage();
  for (const [k, v] of storage.m) copy.setItem(k, v);
  const dup = new TabDeviceStore({ storage: copy, locks, lockWaitMs: 300 });
  const loading = dup.load();
  await settle();
  tick(299);
  await settle();
  let result = "waiting";
  loading.then((r) => (result = r));
  await settle();
  assert.equal(result, "waiting", "a reload's old page may still hold it for a moment");
  tick(1);
  assert.equal(await loading, null, "the copy gets a device of its own");
  assert.equal(dup.loadSession(), null, "and does not take the original's session over");
  await again.client.close();
  assert.equal(storage.getItem("herald:session"), null, "close ends the session: nothing to resume");
});
