// Starts the real `herald` binary (dev mode, 127.0.0.1:0, its own temp data dir) and talks
// HTTP to it. Waits are on events with timeouts, never sleeps.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../../..");
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(repoRoot, process.env.CARGO_TARGET_DIR) : join(repoRoot, "target");

/** The herald binary: HERALD_BIN, else the workspace's debug build. */
export function heraldBin() {
  const bin = process.env.HERALD_BIN ?? join(targetDir, "debug", "herald");
  if (!existsSync(bin)) throw new Error(`no herald binary at ${bin}: run \`cargo build -p herald-server\` first (or set HERALD_BIN)`);
  return bin;
}

/** A built cargo example (e.g. the Rust SDK's `chat`). */
export function exampleBin(name) {
  const bin = join(targetDir, "debug", "examples", name);
  if (!existsSync(bin)) throw new Error(`no example binary at ${bin}: run \`cargo build -p herald-client --example ${name}\``);
  return bin;
}

export const WAIT = 10_000;

/** Rejects after `ms` with `what` unless `p` settles first. */
export function within(p, what, ms = WAIT) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

export function tempDir(prefix = "herald-js-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

export class Herald {
  /** env: HERALD_… overrides without the prefix, e.g. { SESSION__HEARTBEAT_MS: "300" }. */
  static async start(env = {}, { dir, dev = true } = {}) {
    const h = new Herald(env, dir ?? tempDir(), !dir, dev);
    await h.spawn();
    return h;
  }

  constructor(env, dir, ownDir, dev) {
    this.env = env;
    this.dir = dir;
    this.ownDir = ownDir;
    this.dev = dev;
    this.child = null;
    this.addr = null;
  }

  async spawn() {
    const env = { ...process.env, RUST_LOG: process.env.HERALD_TEST_LOG ?? "warn", HERALD_STORAGE__DURABILITY: "os" };
    for (const [k, v] of Object.entries(this.env)) env[`HERALD_${k}`] = String(v);
    const args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", this.dir];
    if (this.dev) args.push("--dev");
    const child = spawn(heraldBin(), args, { env, stdio: ["ignore", "pipe", "inherit"] });
    this.child = child;
    const lines = createInterface({ input: child.stdout });
    this.addr = await within(
      new Promise((resolve, reject) => {
        lines.on("line", (l) => {
          const m = l.match(/^herald listening on http:\/\/(\S+)/);
          if (m) resolve(m[1]);
        });
        child.once("exit", (code) => reject(new Error(`herald exited (${code}) before listening`)));
      }),
      "herald to listen",
    );
    // stdout keeps being drained by the readline interface.
    this.exited = new Promise((r) => child.once("exit", r));
  }

  get wsUrl() {
    return `ws://${this.addr}/v1/ws`;
  }

  url(path) {
    return `http://${this.addr}${path}`;
  }

  /** kill -9 */
  async kill() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** Starts again on the same data dir (after kill); the address changes. */
  async restart() {
    await this.kill();
    await this.spawn();
  }

  async stop() {
    await this.kill();
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
  }

  async get(path) {
    const r = await fetch(this.url(path));
    return { status: r.status, body: await r.json().catch(() => null) };
  }

  async post(path, body) {
    const r = await fetch(this.url(path), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json().catch(() => null) };
  }

  async del(path) {
    const r = await fetch(this.url(path), { method: "DELETE" });
    return { status: r.status, body: await r.json().catch(() => null) };
  }

  async publish(to, body) {
    const r = await this.post("/v1/publish", { to, body });
    if (r.status !== 200) throw new Error(`publish ${to}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** A stream's stored history (items). */
  async history(stream) {
    const r = await this.get(`/v1/streams/${stream}?limit=1000`);
    if (r.status !== 200) throw new Error(`history ${stream}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.items ?? [];
  }

  /** Polls GET path until `ok(body)`; returns the body. */
  async waitFor(path, ok, what = path) {
    const deadline = Date.now() + WAIT;
    let last;
    for (;;) {
      last = await this.get(path);
      if (last.status === 200 && ok(last.body)) return last.body;
      if (Date.now() > deadline) throw new Error(`GET ${path}: ${what} not met within ${WAIT} ms; last ${last.status} ${JSON.stringify(last.body)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Collects a client's events (pass `push` as `onEvent`); `until(pred)` waits for the next
 * event matching `pred` after the last one matched, and returns the events from there to it.
 */
export function eventWaiter() {
  const seen = [];
  let cursor = 0;
  let waiting = null;
  const check = () => {
    if (!waiting) return;
    for (let i = cursor; i < seen.length; i++) {
      if (waiting.pred(seen[i])) {
        cursor = i + 1;
        const w = waiting;
        waiting = null;
        w.resolve(seen.slice(w.from, i + 1));
        return;
      }
    }
    cursor = seen.length;
  };
  return {
    seen,
    push: (e) => {
      seen.push(e);
      check();
    },
    until(pred, what = "event") {
      const p = new Promise((resolve) => (waiting = { pred, resolve, from: cursor }));
      check();
      return within(p, `${what}; seen ${JSON.stringify(seen)}`);
    },
  };
}

/** Takes `n` deliveries from an iterator, each within WAIT. */
export async function take(it, n) {
  const out = [];
  while (out.length < n) {
    const r = await within(it.next(), `only ${out.length} of ${n} deliveries: ${JSON.stringify(out.map((d) => [d.stream, d.offset]))}`);
    if (r.done) throw new Error(`deliveries ended after ${out.length}`);
    out.push(r.value);
  }
  return out;
}

/** Asserts that no delivery arrives within `ms` (an upper bound on a negative, not a sleep for order). */
export async function expectNone(it, ms) {
  const r = await Promise.race([it.next(), new Promise((res) => setTimeout(() => res("none"), ms))]);
  if (r !== "none") throw new Error(`unexpected delivery ${JSON.stringify(r.value)}`);
}
