// Backoff, dedupe and the recovery buffer's slots on their own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ReconnectStrategy, Dedupe, Slots, AsyncQueue } from "../../dist/index.js";

test("default backoff grows from 100 ms and caps at 5 s", () => {
  const s = ReconnectStrategy.exponential();
  assert.equal(s.ceiling(1), 100);
  assert.equal(s.ceiling(2), 200);
  assert.equal(s.ceiling(4), 800);
  assert.equal(s.ceiling(7), 5000);
  assert.equal(s.ceiling(1000), 5000);
});

test("full jitter stays within zero and the ceiling and varies", () => {
  const s = ReconnectStrategy.exponential();
  const seen = new Set();
  for (let attempt = 1; attempt <= 12; attempt++) {
    for (let i = 0; i < 200; i++) {
      const d = s.delay(attempt);
      assert.ok(d >= 0 && d <= s.ceiling(attempt), `${d} outside [0, ${s.ceiling(attempt)}] at ${attempt}`);
      assert.ok(Number.isInteger(d));
      seen.add(d);
    }
  }
  assert.ok(seen.size > 50, `jitter must spread delays, saw ${seen.size}`);
  // The extremes of the random source map to 0 and the ceiling.
  assert.equal(ReconnectStrategy.exponential(100, 5000, () => 0).delay(3), 0);
  assert.equal(ReconnectStrategy.exponential(100, 5000, () => 0.9999999).delay(3), 400);
});

test("fixed and custom strategies return what they say; bad values are refused", () => {
  assert.equal(ReconnectStrategy.fixed(5000).delay(1), 5000);
  assert.equal(ReconnectStrategy.fixed(5000).delay(9), 5000);
  assert.equal(ReconnectStrategy.custom((n) => n * 10).delay(3), 30);
  assert.throws(() => ReconnectStrategy.exponential(-1, 10), /minMs must be/);
  assert.throws(() => ReconnectStrategy.fixed(NaN), /ms must be/);
});

test("redelivered offsets are dropped per stream", () => {
  const d = new Dedupe();
  assert.ok(d.accept("inbox", 1));
  assert.ok(d.accept("inbox", 2));
  assert.ok(!d.accept("inbox", 2), "same offset again");
  assert.ok(!d.accept("inbox", 1), "older offset after a resume");
  assert.ok(d.accept("chan:a", 1), "streams are independent");
  assert.ok(d.accept("inbox", 5), "a later offset passes even after a hole");
  assert.equal(d.last("inbox"), 5);
  assert.equal(d.last("chan:b"), undefined);
});

test("a gap moves the position and is announced once; an explicit replay is handed on again", () => {
  const d = new Dedupe();
  assert.ok(d.accept("chan:a", 3));
  assert.ok(d.acceptGap("chan:a", 9));
  assert.ok(!d.acceptGap("chan:a", 9), "the same gap after a resume");
  assert.ok(!d.accept("chan:a", 8), "offsets inside the gap are behind");
  assert.ok(d.accept("chan:a", 10));
  d.set("chan:a", 2);
  assert.ok(d.accept("chan:a", 3));
});

test("slots: acquire waits when full, release hands the slot on in order, close fails waiters", async () => {
  const s = new Slots(2);
  await s.acquire();
  await s.acquire();
  assert.equal(s.inUse, 2);
  const order = [];
  const a = s.acquire().then(() => order.push("a"));
  const b = s.acquire().then(() => order.push("b"), (e) => order.push(`b: ${e.message}`));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [], "both wait while the buffer is full");
  s.release();
  await a;
  assert.deepEqual(order, ["a"]);
  assert.equal(s.inUse, 2, "the slot went to the waiter, not back to the pool");
  const err = new Error("stopped");
  const c = s.acquire();
  s.close(err);
  await assert.rejects(c, /stopped/);
  await assert.rejects(s.acquire(), /stopped/);
  await b;
  assert.deepEqual(order, ["a", "b: stopped"], "a waiter is failed, never left hanging");
});

test("the async queue hands items in order, marks them taken, and ends after what is queued", async () => {
  const taken = [];
  const q = new AsyncQueue((x) => taken.push(x));
  q.push(1);
  q.push(2);
  assert.deepEqual(taken, [], "queued is not taken");
  const waiting = (async () => {
    const out = [];
    for await (const x of q) out.push(x);
    return out;
  })();
  await new Promise((r) => setImmediate(r));
  q.push(3);
  q.end();
  q.push(4);
  assert.deepEqual(await waiting, [1, 2, 3]);
  assert.deepEqual(taken, [1, 2, 3]);
});
