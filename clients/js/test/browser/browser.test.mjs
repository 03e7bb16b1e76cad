// In a real browser: Debian's headless Chromium (driven by playwright-core, no browser
// download) loads the built SDK from a page served on loopback, on another origin than the
// server (another port), and talks to a real herald through the fault-injecting proxy.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Herald, within, tempDir, exampleBin, WAIT } from "../support/herald.mjs";
import { Proxy } from "../support/proxy.mjs";
import { serveStatic } from "../support/static.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, "../..");
const CHROMIUM = process.env.HERALD_CHROMIUM ?? "/usr/bin/chromium";

let herald, proxy, site, browser;
before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set HERALD_CHROMIUM)`);
  herald = await Herald.start();
  proxy = await Proxy.start(herald.addr);
  site = await serveStatic({ "/sdk/": join(pkg, "dist"), "/": here });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  await site?.close();
  await proxy?.close();
  await herald?.stop();
});

async function openPage(ctx, uid) {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`[page ${uid}] ${e.message}`));
  await page.goto(`${site.origin}/page.html`);
  await page.waitForFunction(() => window.h?.ready === true);
  const session = await page.evaluate(([url, uid]) => window.h.start(url, uid), [proxy.wsUrl, uid]);
  return { page, session };
}
const wait = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT });
const offsetsOf = (page, stream) => page.evaluate((s) => window.h.got.filter((d) => d.stream === s).map((d) => d.offset), stream);

test("a page connects, subscribes, publishes, receives, survives a socket drop, resumes exactly once, and a reload resumes", async () => {
  const ctx = await browser.newContext();
  const { page, session } = await openPage(ctx, "wendy");
  assert.equal(await page.evaluate(() => window.h.hello()), "native WebSocket");
  assert.notEqual(new URL(site.origin).port, herald.addr.split(":")[1], "the page is on another origin than the server");
  console.log(`browser: connected from ${site.origin} to ${proxy.wsUrl}, session ${session.session}, device ${session.device}`);

  await page.evaluate(() => window.h.subscribe("web"));
  const p = await page.evaluate(() => window.h.publish("chan:web", { text: "from the page" }));
  assert.equal(p.offset, 1);
  await herald.publish("chan:web", { text: "from a backend" });
  await wait(page, () => window.h.got.length >= 2);
  assert.deepEqual(await page.evaluate(() => window.h.got.map((d) => d.body.text)), ["from the page", "from a backend"]);

  // Socket drop: the proxy cuts the page's connection; messages published meanwhile arrive once.
  proxy.cutAll();
  await wait(page, () => window.h.events.some((e) => e.type === "disconnected"));
  for (let i = 3; i <= 5; i++) await herald.publish("chan:web", { n: i });
  await wait(page, () => window.h.events.filter((e) => e.type === "connected").length >= 2);
  const connected = await page.evaluate(() => window.h.events.filter((e) => e.type === "connected"));
  assert.deepEqual(connected.at(-1), { type: "connected", resumed: true });
  await wait(page, () => window.h.got.length >= 5);
  assert.deepEqual(await offsetsOf(page, "chan:web"), [1, 2, 3, 4, 5]);
  console.log(`browser: after the drop: ${JSON.stringify(await page.evaluate(() => window.h.events.map((e) => e.type)))}`);

  // Reload: the tab keeps its device and its session; nothing it took is handed on again.
  await herald.waitFor(`/v1/sessions?uid=wendy`, (v) => v.items.length === 1);
  await page.reload();
  await page.waitForFunction(() => window.h?.ready === true);
  for (let i = 6; i <= 7; i++) await herald.publish("chan:web", { n: i });
  const again = await page.evaluate((url) => window.h.start(url, "wendy"), proxy.wsUrl);
  assert.equal(again.device, session.device, "same device after the reload");
  assert.equal(again.session, session.session, "same session after the reload");
  assert.deepEqual(await page.evaluate(() => window.h.events.filter((e) => e.type === "connected")), [{ type: "connected", resumed: true }]);
  // The session kept its subscription; what was missed during the reload arrives.
  await wait(page, () => window.h.got.length >= 2);
  await herald.publish("chan:web", { n: 8 });
  await wait(page, () => window.h.got.length >= 3);
  assert.deepEqual(await offsetsOf(page, "chan:web"), [6, 7, 8], "offsets 1..5 were taken before the reload and are not replayed");
  const sessions = (await herald.get("/v1/sessions?uid=wendy")).body.items;
  assert.equal(sessions.length, 1, JSON.stringify(sessions));
  console.log(`browser: reload resumed session ${again.session} on device ${again.device}; after it got offsets 6,7,8 only`);
  await ctx.close();
});

test("a reload drops redeliveries of what the page took before it, even when its acks were not sent yet", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(`${site.origin}/page.html`);
  await page.waitForFunction(() => window.h?.ready === true);
  // Acks held back for a minute: the server still counts these deliveries as unacknowledged.
  const slow = { ackIntervalMs: 60_000, ackBatch: 1000 };
  const first = await page.evaluate(([url, o]) => window.h.start(url, "rhea", o), [proxy.wsUrl, slow]);
  const ids = [];
  for (let i = 1; i <= 3; i++) ids.push((await herald.publish("user:rhea", { n: i })).id);
  await wait(page, () => window.h.got.length >= 3);
  const trace = (await herald.get(`/v1/messages/${ids[2]}`)).body;
  assert.equal(trace.summary.acked, 0, "taken by the page, not acknowledged yet");
  await page.reload();
  await page.waitForFunction(() => window.h?.ready === true);
  const again = await page.evaluate(([url, o]) => window.h.start(url, "rhea", o), [proxy.wsUrl, slow]);
  assert.equal(again.session, first.session);
  await herald.publish("user:rhea", { n: 4 });
  await wait(page, () => window.h.got.length >= 1);
  assert.deepEqual(await page.evaluate(() => window.h.got.map((d) => d.body.n)), [4], "1..3, taken before the reload, are not handed on again");
  // The positions restored after the reload were acknowledged again with the welcome.
  await herald.waitFor(`/v1/messages/${ids[2]}`, (v) => v.summary.acked === 1, "acked after the reload");
  await ctx.close();
});

test("two tabs of one user under multi both keep receiving, neither evicts the other", async () => {
  const ctx = await browser.newContext();
  const a = await openPage(ctx, "tess");
  const b = await openPage(ctx, "tess");
  assert.notEqual(a.session.device, b.session.device, "a device per tab");
  for (const t of [a, b]) await t.page.evaluate(() => window.h.subscribe("tabs"));
  await a.page.evaluate(() => window.h.publish("chan:tabs", "from tab a"));
  await b.page.evaluate(() => window.h.publish("chan:tabs", "from tab b"));
  await herald.publish("user:tess", "to the user");
  for (const t of [a, b]) {
    await wait(t.page, () => window.h.got.length >= 3);
    const got = await t.page.evaluate(() => window.h.got.map((d) => d.body).sort());
    assert.deepEqual(got, ["from tab a", "from tab b", "to the user"]);
    const evs = await t.page.evaluate(() => window.h.events.map((e) => e.type));
    assert.ok(!evs.includes("evicted"), JSON.stringify(evs));
  }
  const ev = await herald.get("/v1/events?type=eviction");
  assert.equal(ev.body.items.filter((i) => JSON.stringify(i).includes("tess")).length, 0);
  console.log(`browser: two tabs, devices ${a.session.device} and ${b.session.device}, both received 3, no eviction`);
  await ctx.close();
});

test("a Rust SDK client and a JS client on the same channel see each other's messages", async () => {
  const cwd = tempDir("herald-js-rust-");
  const rust = spawn(exampleBin("chat"), ["rusty", "lobby"], {
    cwd,
    env: { ...process.env, HERALD_URL: herald.wsUrl, HERALD_STATE_DIR: cwd, RUST_LOG: "warn" },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = [];
  const waiters = [];
  createInterface({ input: rust.stdout }).on("line", (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (w.re.test(l)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(l));
  });
  const line = (re) => within(new Promise((resolve) => {
    const hit = lines.find((l) => re.test(l));
    if (hit) resolve(hit);
    else waiters.push({ re, resolve });
  }), `rust chat line ${re}; got ${JSON.stringify(lines)}`);
  try {
    await line(/^joined lobby/);
    const ctx = await browser.newContext();
    const { page } = await openPage(ctx, "jess");
    await page.evaluate(() => window.h.subscribe("lobby", 0));
    rust.stdin.write("hello from rust\n");
    await wait(page, () => window.h.got.some((d) => d.body?.text === "hello from rust"));
    const d = await page.evaluate(() => window.h.got.find((d) => d.body?.text === "hello from rust"));
    assert.equal(d.from, "rusty");
    await page.evaluate(() => window.h.publish("chan:lobby", { text: "hello from js" }));
    const l = await line(/jess: hello from js/);
    console.log(`browser+rust: page got ${JSON.stringify(d.body)} from ${d.from}; rust printed "${l}"`);
    await ctx.close();
  } finally {
    rust.stdin.end();
    rust.kill();
    rmSync(cwd, { recursive: true, force: true });
  }
});

test("examples/web-chat keeps working across a network cut", async () => {
  // The example's own server (examples/web-chat/serve.mjs) on a free port.
  const serve = spawn(process.execPath, [resolve(pkg, "../../examples/web-chat/serve.mjs")], {
    env: { ...process.env, PORT: "0" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const origin = await within(
    new Promise((res, rej) => {
      createInterface({ input: serve.stdout }).on("line", (l) => {
        const m = l.match(/^web chat on (http:\/\/127\.0\.0\.1:\d+)\//);
        if (m) res(m[1]);
      });
      serve.once("exit", (c) => rej(new Error(`serve.mjs exited ${c}`)));
    }),
    "web-chat server",
  );
  const chat = { origin, close: async () => serve.kill() };
  const ctx = await browser.newContext();
  try {
    const page = await ctx.newPage();
    page.on("pageerror", (e) => console.error(`[web-chat] ${e.message}`));
    await page.goto(`${chat.origin}/?server=${encodeURIComponent(proxy.wsUrl)}&uid=walt&room=webchat`);
    await page.waitForSelector("#text:not([disabled])", { timeout: WAIT });
    const say = async (text) => {
      await page.fill("#text", text);
      await page.press("#text", "Enter");
    };
    const shown = (text) => page.locator("#log li", { hasText: `walt: ${text}` });
    await say("before the cut");
    await shown("before the cut").waitFor({ timeout: WAIT });
    proxy.refuse(true);
    proxy.cutAll();
    await page.waitForFunction(() => document.getElementById("state").textContent.startsWith("offline"), null, { timeout: WAIT });
    await say("typed while offline");
    await page.locator("#log li", { hasText: "sending… typed while offline" }).waitFor({ timeout: WAIT });
    proxy.refuse(false);
    await shown("typed while offline").waitFor({ timeout: WAIT });
    await page.waitForFunction(() => document.getElementById("state").textContent.startsWith("connected"), null, { timeout: WAIT });
    assert.equal(await shown("before the cut").count(), 1, "nothing shown twice");
    assert.equal(await shown("typed while offline").count(), 1);
    assert.equal((await herald.history("chan:webchat")).length, 2);
    console.log(`web-chat: state "${await page.textContent("#state")}", log ${JSON.stringify(await page.locator("#log li").allTextContents())}`);
  } finally {
    await ctx.close();
    await chat.close();
  }
});
