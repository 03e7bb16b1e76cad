// Test harness: starts the real `herald` binary on 127.0.0.1:0 in a temporary data directory,
// speaks real WebSocket frames to it (the `ws` package), calls its HTTP API, and drives Debian's
// chromium through playwright-core (never a downloaded browser). Waits are on events with
// timeouts, never fixed sleeps.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../../..');

/// Longest wait for anything expected.
export const WAIT_MS = 10000;

/// The debug binary cargo built (HERALD_BIN overrides).
export function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  const bin = join(target, 'debug', 'herald');
  if (!existsSync(bin)) throw new Error(`no herald binary at ${bin}: run \`cargo build -p herald-server\` first (or set HERALD_BIN)`);
  // The pages are compiled into the binary: one older than them would test old pages.
  const assets = join(here, '..');
  for (const f of readdirSync(assets).filter((n) => /\.(html|css|js)$/.test(n))) {
    if (statSync(join(assets, f)).mtimeMs > statSync(bin).mtimeMs) {
      throw new Error(`${bin} is older than dashboard/${f}, which it embeds: run \`cargo build -p herald-server\` first`);
    }
  }
  return bin;
}

/// Chromium: CHROMIUM or Debian's /usr/bin/chromium.
export function chromiumPath() {
  const p = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(p)) throw new Error(`no chromium at ${p}: apt-get install chromium (or set CHROMIUM)`);
  return p;
}

/// Where screenshots go: DASHBOARD_TEST_OUT, else tests/output/.
export function outputDir() {
  const d = process.env.DASHBOARD_TEST_OUT || join(here, 'output');
  mkdirSync(d, { recursive: true });
  return d;
}

export function timeout(ms, what) {
  let t;
  const p = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  p.clear = () => clearTimeout(t);
  return p;
}

/// A port on 127.0.0.1 that was free a moment ago (for a server restarted on the same address).
export async function freePort() {
  const srv = createServer();
  await new Promise((res) => srv.listen(0, '127.0.0.1', res));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}

/// A running server. `env`: HERALD_… settings without the prefix; `dir`: an existing
/// temporary directory to reuse (a restart), else a new one; `port`: 0 for any.
export async function startServer({ dev = false, env = {}, dir = null, port = 0 } = {}) {
  dir = dir ?? mkdtempSync(join(tmpdir(), 'herald-dash-'));
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, 'data')];
  if (dev) args.push('--dev');
  const childEnv = { ...process.env, RUST_LOG: process.env.HERALD_TEST_LOG || 'error' };
  for (const [k, v] of Object.entries(env)) childEnv[`HERALD_${k}`] = String(v);
  const child = spawn(heraldBin(), args, { env: childEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  const t = timeout(WAIT_MS, 'the server to listen');
  const addr = await Promise.race([t, new Promise((res, rej) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const m = /herald listening on (http:\/\/\S+)/.exec(buf);
      if (m) res(m[1]);
    });
    child.on('exit', (code) => rej(new Error(`herald exited with ${code} before listening`)));
  })]);
  t.clear();
  const exited = new Promise((res) => child.on('exit', res));
  return {
    url: addr,
    ws: `${addr.replace(/^http/, 'ws')}/v1/ws`,
    dir,
    /// Stops the process (SIGTERM, graceful); `keep`: leave the data directory for a restart.
    async stop({ keep = false } = {}) {
      child.kill('SIGTERM');
      const t = timeout(WAIT_MS, 'the server to exit');
      await Promise.race([exited, t]);
      t.clear();
      if (!keep) rmSync(dir, { recursive: true, force: true });
    },
  };
}

function b64url(x) {
  return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
}

/// An HS256 token for `uid`.
export function token(secret, uid, claims = {}) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: uid, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/// Calls the HTTP API; returns { status, body }.
export async function http(server, method, path, { key, json } = {}) {
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${server.url}${path}`, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, body };
}

/// A WebSocket client of the herald protocol: hello → welcome, answers pings, queues frames.
export class Client {
  static async connect(server, hello) {
    const c = new Client();
    c.ws = new WebSocket(server.ws);
    c.frames = [];
    c.waiters = [];
    c.closeCode = null;
    c.closed = new Promise((res) => c.ws.on('close', (code) => {
      c.closeCode = code;
      res(code);
      c.wake();
    }));
    c.ws.on('message', (data) => {
      for (const line of String(data).split('\n')) {
        if (!line) continue;
        const f = JSON.parse(line);
        if (f.t === 'ping') {
          c.send({ t: 'pong' });
          continue;
        }
        c.frames.push(f);
      }
      c.wake();
    });
    await new Promise((res, rej) => {
      c.ws.once('open', res);
      c.ws.once('error', rej);
    });
    c.send({ t: 'hello', v: 1, ...hello });
    c.welcome = await c.next((f) => f.t === 'welcome', 'welcome');
    return c;
  }

  send(f) {
    this.ws.send(JSON.stringify(f));
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  /// The first queued frame matching `pred` (removed from the queue), waiting up to WAIT_MS.
  async next(pred, what = 'a frame', ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.closeCode !== null) throw new Error(`connection closed (${this.closeCode}) while waiting for ${what}; frames: ${JSON.stringify(this.frames)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames)}`);
      await new Promise((res) => {
        const t = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
  }

  close() {
    this.ws.close();
  }
}
