// The Node example: a backend agent as two instances, each with its own device.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { rmSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "../../dist/index.js";
import { Herald, repoRoot, take, tempDir, within } from "../support/herald.mjs";

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

function agent(i, n, env) {
  const child = spawn(process.execPath, [join(repoRoot, "examples/node-agent/agent.mjs"), String(i), String(n)], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  cleanups.push(() => child.kill());
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on("line", (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (w.re.test(l)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(l));
  });
  const line = (re) =>
    within(
      new Promise((resolve) => {
        const hit = lines.find((l) => re.test(l));
        if (hit) resolve(hit);
        else waiters.push({ re, resolve });
      }),
      `agent ${i} line ${re}; got ${JSON.stringify(lines)}`,
    );
  return { child, lines, line };
}

test("examples/node-agent: two instances, two devices, each answers its share, nobody is evicted", async () => {
  const h = await Herald.start();
  cleanups.push(() => h.stop());
  const dir = tempDir("herald-js-agent-");
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const env = { HERALD_URL: h.wsUrl, HERALD_AGENT_DIR: dir };
  const a0 = agent(0, 2, env);
  const a1 = agent(1, 2, env);
  const d0 = (await a0.line(/^agent instance 0\/2 on device (\S+)/)).match(/device (\S+)/)[1];
  const d1 = (await a1.line(/^agent instance 1\/2 on device (\S+)/)).match(/device (\S+)/)[1];
  assert.notEqual(d0, d1, "each instance has its own device");
  assert.equal(readFileSync(join(dir, "instance-0", "herald-device"), "utf8"), d0, "kept under the given dir");

  const carol = await connect({ url: h.wsUrl, devUid: "carol", device: "c1" });
  cleanups.push(() => carol.close());
  for (let i = 1; i <= 4; i++) await h.post("/v1/publish", { to: "user:agent", from: "carol", body: { ask: i } });
  const answers = await take(carol.deliveries(), 4);
  assert.deepEqual(answers.map((a) => a.body.answer.ask).sort(), [1, 2, 3, 4]);
  const by = answers.map((a) => a.body.by);
  assert.equal(by.filter((d) => d === d0).length, 2);
  assert.equal(by.filter((d) => d === d1).length, 2);
  const ev = await h.get("/v1/events?type=eviction");
  assert.equal(ev.body.items.length, 0, "the instances never evict each other");
});
