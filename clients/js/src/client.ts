import { ReconnectStrategy } from "./backoff.js";
import { Dedupe } from "./dedupe.js";
import { type DeviceStore, MemoryDeviceStore, type SavedSession } from "./device.js";
import {
  ClosedError,
  ConnectError,
  DeviceStoreError,
  type EvictReason,
  type EvictedBy,
  EvictedError,
  HeraldError,
  InvalidError,
  RefusedError,
  ServerError,
} from "./errors.js";
import { AsyncQueue, Slots } from "./queue.js";

/** One message handed to the application. */
export interface Delivery {
  /** `inbox` or `chan:<name>`. */
  stream: string;
  offset: number;
  id: string;
  from: string;
  ts: number;
  body: unknown;
}

/** The server's answer to a publish: the message is durable. */
export interface Published {
  id: string;
  /** `inbox` (user targets) or `chan:<name>`. */
  stream: string;
  offset: number;
  /** User targets: how many of the recipient's sessions were connected when it was stored. */
  online?: number;
  /** The idempotency id had been stored before; this names the stored message. */
  dup: boolean;
}

/** The server's answer to a subscribe. */
export interface Subscribed {
  stream: string;
  /** The channel's last offset when the subscription was made. */
  offset: number;
}

/** The current session. */
export interface SessionInfo {
  session: string;
  uid: string;
  device: string;
  conn: string;
}

/** Connection states and what could not be recovered; `closed` is always the last. */
export type ConnectionEvent =
  | { type: "connecting" }
  | { type: "connected"; resumed: boolean }
  | { type: "disconnected"; reason: string }
  | { type: "reconnecting"; attempt: number; nextIn: number }
  | { type: "resumeFailed"; reason: string }
  | { type: "gap"; stream: string; from: number; to: number }
  | { type: "evicted"; reason: EvictReason; by: EvictedBy }
  | { type: "closed" };

/** The subset of the WebSocket API the client uses (browsers' and `ws`'s both have it). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** e.g. `ws://127.0.0.1:7070/v1/ws`. */
  url: string;
  /** A JWT. */
  token?: string;
  /** Called before every connection attempt for a fresh JWT (wins over `token`). */
  getToken?: () => string | Promise<string>;
  /** Log in as this uid without a token (servers in dev mode only). */
  devUid?: string;
  /** A fixed device id (shorthand for a `MemoryDeviceStore` holding it). */
  device?: string;
  /** Loads and saves the device id (default: memory only). */
  deviceStore?: DeviceStore;
  /** Delay before reconnect attempts (default: exponential, full jitter, 100 ms → 5 s). */
  reconnect?: ReconnectStrategy;
  /** Sent as `hello.reconnect_timeout_ms` (default 60 000); 0 disables resume. */
  reconnectTimeoutMs?: number;
  /** Unanswered requests kept for resending (default 128); when full, requests wait. */
  recoveryBuffer?: number;
  /** Silence allowed on top of `welcome.heartbeat_ms` (default 10 000). */
  heartbeatGraceMs?: number;
  /** One attempt, from opening the socket to `welcome` (default 10 000). */
  connectTimeoutMs?: number;
  /** Acks are flushed at most this long after the app took a message (default 50). */
  ackIntervalMs?: number;
  /** Acks are flushed at once after this many taken messages (default 64). */
  ackBatch?: number;
  /** The WebSocket class (default: `globalThis.WebSocket`, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** Called with every event, from the first `connecting` on. */
  onEvent?: (e: ConnectionEvent) => void;
}

/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSE = [4000, 4003, 4010];
/** How often a resent request answered `bad_frame` is reissued before the error is returned. */
const MAX_REISSUES = 3;
const OPEN = 1;
const NAME = /^[A-Za-z0-9_\-./]{1,128}$/;

type Request =
  | { t: "pub"; to: string; body: unknown; id: string; receipt: boolean }
  | { t: "sub"; chan: string; from: number | undefined }
  | { t: "unsub"; chan: string };

type Answer = Published | Subscribed | undefined;

interface Pending {
  req: Request;
  /** `null` for requests the SDK makes itself (resubscribing after a failed resume). */
  resolve: ((a: Answer) => void) | null;
  reject: ((e: Error) => void) | null;
  /** Holds a slot of the recovery buffer. */
  slot: boolean;
  resent: boolean;
  reissues: number;
}

interface ServerFrame {
  t: string;
  [k: string]: unknown;
}

type Outcome =
  | { kind: "lost"; reason: string; welcomed: boolean }
  | { kind: "fatal"; err: HeraldError }
  | { kind: "stop" };

interface Conn {
  ws: WebSocketLike;
  welcomed: boolean;
  finish: (o: Outcome) => void;
}

/** A random idempotency id: 128 random bits in hex. */
export function newId(): string {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function validName(what: string, name: string): void {
  if (!NAME.test(name)) {
    throw new InvalidError(`${what} must be 1-128 chars of A-Z a-z 0-9 _ - . /, got ${JSON.stringify(name)}`);
  }
}

function validTarget(to: string): void {
  if (to.startsWith("user:")) validName("uid", to.slice(5));
  else if (to.startsWith("chan:")) validName("channel", to.slice(5));
  else throw new InvalidError(`target must be user:<uid> or chan:<name>, got ${JSON.stringify(to.slice(0, 140))}`);
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = globalThis as { WebSocket?: WebSocketConstructor };
  if (g.WebSocket) return g.WebSocket;
  const name = "ws";
  try {
    const m = (await import(/* @vite-ignore */ /* webpackIgnore: true */ name)) as {
      WebSocket?: WebSocketConstructor;
      default?: WebSocketConstructor;
    };
    const ctor = m.WebSocket ?? m.default;
    if (ctor) return ctor;
  } catch {
    // Reported below.
  }
  throw new InvalidError(
    "no WebSocket: this runtime has no global WebSocket; install the `ws` package or pass options.WebSocket",
  );
}

/**
 * A herald client: one logical session kept across network cuts, server restarts and failed
 * resumes. Create it with {@link connect}.
 */
export class Client {
  private readonly url: string;
  private readonly opts: ClientOptions;
  private readonly store: DeviceStore;
  private readonly reconnect: ReconnectStrategy;
  private readonly reconnectTimeoutMs: number;
  private readonly heartbeatGraceMs: number;
  private readonly connectTimeoutMs: number;
  private readonly ackIntervalMs: number;
  private readonly ackBatch: number;
  private readonly slots: Slots;
  private WS: WebSocketConstructor | null;

  private readonly dedupe = new Dedupe();
  private readonly pending = new Map<number, Pending>();
  private nextSeq = 1;
  private sessionKeys: { session: string; key: string } | null = null;
  /** Channels subscribed (answered ok), with the channel's last offset at subscribe time. */
  private readonly subs = new Map<string, number>();
  private hbLimitMs = 3_600_000;
  private conn: Conn | null = null;
  private info: SessionInfo | null = null;
  private stoppedWith: HeraldError | null = null;
  private wakeWait: (() => void) | null = null;
  private everConnected = false;

  /** Last offset taken by the app per stream, and whether it still needs sending. */
  private readonly ackPos = new Map<string, { o: number; dirty: boolean }>();
  private sinceFlush = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;

  private readonly deliveryQueue: AsyncQueue<Delivery>;
  private deliveriesTaken = false;
  private readonly eventQueue = new AsyncQueue<ConnectionEvent>();
  private eventsTaken = false;
  private readonly listeners = new Set<(e: ConnectionEvent) => void>();
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  /** Use {@link connect}. */
  constructor(opts: ClientOptions) {
    if (!opts || typeof opts.url !== "string" || opts.url === "") {
      throw new InvalidError("options.url is required (e.g. ws://127.0.0.1:7070/v1/ws)");
    }
    if (!opts.token && !opts.getToken && !opts.devUid) {
      throw new InvalidError("a token, getToken or a dev uid is required");
    }
    this.url = opts.url;
    this.opts = opts;
    this.store = opts.deviceStore ?? new MemoryDeviceStore(opts.device ?? null);
    this.reconnect = opts.reconnect ?? ReconnectStrategy.exponential(100, 5000);
    this.reconnectTimeoutMs = nonNegative("reconnectTimeoutMs", opts.reconnectTimeoutMs ?? 60_000);
    this.heartbeatGraceMs = nonNegative("heartbeatGraceMs", opts.heartbeatGraceMs ?? 10_000);
    this.connectTimeoutMs = nonNegative("connectTimeoutMs", opts.connectTimeoutMs ?? 10_000);
    this.ackIntervalMs = Math.max(1, nonNegative("ackIntervalMs", opts.ackIntervalMs ?? 50));
    this.ackBatch = Math.max(1, Math.floor(nonNegative("ackBatch", opts.ackBatch ?? 64)));
    this.slots = new Slots(Math.max(1, Math.floor(nonNegative("recoveryBuffer", opts.recoveryBuffer ?? 128))));
    this.WS = opts.WebSocket ?? null;
    if (opts.onEvent) this.listeners.add(opts.onEvent);
    this.deliveryQueue = new AsyncQueue<Delivery>((d) => this.taken(d));
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
  }

  /** Starts the connection; resolves on the first `welcome`, rejects if that first attempt fails. */
  start(): Promise<Client> {
    return new Promise<Client>((resolve, reject) => {
      void this.run(
        () => resolve(this),
        (e) => reject(e),
      );
    });
  }

  // ----- public API ------------------------------------------------------------------------

  /**
   * Publishes `body` to `to` (`user:<uid>` or `chan:<name>`); resolves once the server says
   * the message is durable. Waits while the recovery buffer is full.
   */
  async publish(to: string, body: unknown, opts: { receipt?: boolean } = {}): Promise<Published> {
    validTarget(to);
    if (body === undefined) throw new InvalidError("body must be a JSON value, got undefined");
    const req: Request = { t: "pub", to, body, id: newId(), receipt: opts.receipt === true };
    return (await this.request(req)) as Published;
  }

  /** Subscribes to channel `chan`: `from` omitted = live from now; a number = replay after it. */
  async subscribe(chan: string, from?: number): Promise<Subscribed> {
    validName("channel", chan);
    if (from !== undefined && !(Number.isInteger(from) && from >= 0)) {
      throw new InvalidError(`from must be an offset >= 0, got ${from}`);
    }
    return (await this.request({ t: "sub", chan, from })) as Subscribed;
  }

  /** Unsubscribes from channel `chan`. */
  async unsubscribe(chan: string): Promise<void> {
    validName("channel", chan);
    await this.request({ t: "unsub", chan });
  }

  /**
   * The deliveries, exactly once and in per-stream order, as an async iterator. Taking a
   * message from it marks it for acknowledgement. It can be taken once (or `onDelivery` used).
   */
  deliveries(): AsyncIterableIterator<Delivery> & { tryNext(): Delivery | undefined } {
    if (this.deliveriesTaken) throw new InvalidError("deliveries were already taken");
    this.deliveriesTaken = true;
    return this.deliveryQueue;
  }

  /**
   * The callback form of {@link deliveries}: `cb` is called with each delivery, one at a time;
   * a delivery is acknowledged once `cb` returned (or its promise resolved).
   */
  onDelivery(cb: (d: Delivery) => void | Promise<void>): void {
    this.deliveries();
    const q = this.deliveryQueue;
    void (async () => {
      for (;;) {
        const r = await q.nextUntaken();
        if (r.done) return;
        try {
          await cb(r.value);
        } catch (e) {
          // The app's error is its own: reported, and the delivery counts as handed on.
          setTimeout(() => {
            throw e;
          }, 0);
        }
        this.taken(r.value);
      }
    })();
  }

  /** The connection events as an async iterator (buffered from the start). Taken once. */
  events(): AsyncIterableIterator<ConnectionEvent> {
    if (this.eventsTaken) throw new InvalidError("events were already taken");
    this.eventsTaken = true;
    return this.eventQueue;
  }

  /** Calls `cb` with every later event; returns a function that removes it. */
  onEvent(cb: (e: ConnectionEvent) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  /** The current session (id, uid, device, connection). */
  session(): SessionInfo | null {
    return this.info ? { ...this.info } : null;
  }

  /** How many requests wait for an answer (at most the recovery buffer size). */
  unanswered(): number {
    return this.slots.inUse;
  }

  /** Why the client stopped, if it has. */
  stopped(): HeraldError | null {
    return this.stoppedWith;
  }

  /** Resolves once the client stopped (after `closed`). */
  whenClosed(): Promise<void> {
    return this.closedPromise;
  }

  /**
   * Sends `bye` (the server ends the session at once) and stops. Unanswered requests fail
   * with `ClosedError`.
   */
  async close(): Promise<void> {
    if (this.stoppedWith) return this.closedPromise;
    const c = this.conn;
    if (c && c.welcomed && c.ws.readyState === OPEN) {
      try {
        c.ws.send('{"t":"bye"}');
      } catch {
        // The connection is going anyway.
      }
    }
    this.clearSaved();
    this.stop(new ClosedError());
    if (c) c.finish({ kind: "stop" });
    if (this.wakeWait) this.wakeWait();
    return this.closedPromise;
  }

  // ----- internals -------------------------------------------------------------------------

  private emit(e: ConnectionEvent): void {
    this.eventQueue.push(e);
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  private async request(req: Request): Promise<Answer> {
    if (this.stoppedWith) throw this.stoppedWith;
    try {
      await this.slots.acquire();
    } catch {
      throw this.stoppedWith ?? new ClosedError();
    }
    if (this.stoppedWith) {
      this.slots.release();
      throw this.stoppedWith;
    }
    return new Promise<Answer>((resolve, reject) => {
      const seq = this.enqueue({ req, resolve, reject, slot: true, resent: false, reissues: 0 });
      const c = this.conn;
      if (c && c.welcomed) this.send(c, Client.frame(seq, req));
    });
  }

  private enqueue(p: Pending): number {
    const seq = this.nextSeq++;
    this.pending.set(seq, p);
    return seq;
  }

  private settle(p: Pending, result: { ok: Answer } | { err: Error }): void {
    if (p.slot) {
      p.slot = false;
      this.slots.release();
    }
    if ("ok" in result) p.resolve?.(result.ok);
    else if (p.reject) p.reject(result.err);
  }

  private static frame(seq: number, req: Request): string {
    switch (req.t) {
      case "pub": {
        const f: Record<string, unknown> = { t: "pub", seq, to: req.to, body: req.body, id: req.id };
        if (req.receipt) f.receipt = true;
        return JSON.stringify(f);
      }
      case "sub":
        return JSON.stringify(
          req.from === undefined ? { t: "sub", seq, chan: req.chan } : { t: "sub", seq, chan: req.chan, from: req.from },
        );
      case "unsub":
        return JSON.stringify({ t: "unsub", seq, chan: req.chan });
    }
  }

  /** Sends on `c`; a failure ends the connection (what was not answered is resent later). */
  private send(c: Conn, text: string): void {
    if (this.conn !== c) return;
    try {
      if (c.ws.readyState !== OPEN) throw new Error(`socket not open (state ${c.ws.readyState})`);
      c.ws.send(text);
    } catch (e) {
      c.finish({ kind: "lost", reason: `send: ${(e as Error).message}`, welcomed: c.welcomed });
    }
  }

  private async run(ready: () => void, fail: (e: Error) => void): Promise<void> {
    let readyOpen = true;
    let attempt = 0;
    try {
      if (!this.WS) this.WS = await defaultWebSocket();
      const saved = this.store.loadSession?.() ?? null;
      if (saved) this.restore(saved);
    } catch (e) {
      const err = e instanceof HeraldError ? e : new DeviceStoreError(String((e as Error)?.message ?? e));
      fail(err);
      this.stop(err);
      return;
    }
    for (;;) {
      if (this.stoppedWith) return;
      this.emit({ type: "connecting" });
      const out = await this.connectOnce((deviceSaved) => {
        attempt = 0;
        this.everConnected = true;
        // `connect()` resolves once the device id is saved (a restarted process finds it).
        void deviceSaved.then((ok) => {
          if (ok && readyOpen && !this.stoppedWith) {
            readyOpen = false;
            ready();
          }
        });
      });
      if (out.kind === "stop" || this.stoppedWith) {
        if (readyOpen) fail(this.stoppedWith ?? new ClosedError());
        return;
      }
      if (out.kind === "fatal") {
        if (readyOpen) fail(out.err);
        if (out.err instanceof EvictedError) {
          this.emit({ type: "evicted", reason: out.err.reason, by: out.err.by });
          this.clearSaved();
        }
        this.stop(out.err);
        return;
      }
      if (out.welcomed) {
        this.emit({ type: "disconnected", reason: out.reason });
      } else if (!this.everConnected) {
        fail(new ConnectError(out.reason));
        this.stop(new ClosedError());
        return;
      }
      attempt++;
      const nextIn = this.reconnect.delay(attempt);
      this.emit({ type: "reconnecting", attempt, nextIn });
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.wakeWait = null;
          resolve();
        }, nextIn);
        this.wakeWait = () => {
          clearTimeout(t);
          this.wakeWait = null;
          resolve();
        };
      });
    }
  }

  /** One connection: hello, welcome, then frames until it ends. */
  private connectOnce(onWelcome: (deviceSaved: Promise<boolean>) => void): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      let done = false;
      let ws: WebSocketLike | null = null;
      let refused: { code: string; msg: string } | null = null;
      let lastHeard = Date.now();
      let watchdog: ReturnType<typeof setTimeout> | null = null;
      const connectTimer = setTimeout(() => {
        conn.finish({ kind: "lost", reason: `no welcome within ${this.connectTimeoutMs}ms`, welcomed: false });
      }, this.connectTimeoutMs);

      const conn: Conn = {
        ws: null as unknown as WebSocketLike,
        welcomed: false,
        finish: (o: Outcome) => {
          if (done) return;
          done = true;
          clearTimeout(connectTimer);
          if (watchdog) clearTimeout(watchdog);
          if (this.conn === conn) this.conn = null;
          if (ws) {
            // No-op handlers rather than none: `ws` emits "error" for a socket closed while
            // still connecting, and an "error" nobody listens to would crash the process.
            const ignore = () => {};
            ws.onopen = ignore;
            ws.onmessage = ignore;
            ws.onclose = ignore;
            ws.onerror = ignore;
            try {
              ws.close(1000);
            } catch {
              // Already closed.
            }
          }
          resolve(o);
        },
      };

      const armWatchdog = (ms: number) => {
        if (watchdog) clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          const silent = Date.now() - lastHeard;
          if (silent >= this.hbLimitMs) {
            conn.finish({
              kind: "lost",
              reason: `heartbeat timeout: nothing heard for ${this.hbLimitMs}ms`,
              welcomed: true,
            });
          } else {
            armWatchdog(this.hbLimitMs - silent);
          }
        }, ms);
      };

      const onText = (text: string) => {
        lastHeard = Date.now();
        for (const line of text.split("\n")) {
          if (done) return;
          if (line.trim() === "") continue;
          let f: ServerFrame;
          try {
            f = JSON.parse(line) as ServerFrame;
            if (typeof f !== "object" || f === null || typeof f.t !== "string") throw new Error("no `t`");
          } catch {
            continue; // An undecodable frame from the server is skipped.
          }
          if (!conn.welcomed) {
            switch (f.t) {
              case "welcome": {
                conn.welcomed = true;
                clearTimeout(connectTimer);
                const device = String(f.device ?? "");
                let saved: Promise<boolean> = Promise.resolve(true);
                if (device !== loadedDevice) {
                  try {
                    const r = this.store.save(device);
                    if (r && typeof (r as Promise<void>).then === "function") {
                      saved = (r as Promise<void>).then(
                        () => true,
                        (e) => {
                          const err = new DeviceStoreError(String((e as Error)?.message ?? e));
                          conn.finish({ kind: "fatal", err });
                          return false;
                        },
                      );
                    }
                  } catch (e) {
                    conn.finish({ kind: "fatal", err: new DeviceStoreError(String((e as Error)?.message ?? e)) });
                    return;
                  }
                }
                this.info = {
                  session: String(f.session),
                  uid: String(f.uid),
                  device,
                  conn: String(f.conn),
                };
                onWelcome(saved);
                this.onWelcome(conn, f, askedResume);
                if (!done) armWatchdog(this.hbLimitMs);
                break;
              }
              case "evicted":
                conn.finish({
                  kind: "fatal",
                  err: new EvictedError(String(f.reason) as EvictReason, (f.by ?? {}) as EvictedBy),
                });
                return;
              case "err":
                refused = { code: String(f.code), msg: String(f.msg ?? "") };
                break;
              case "ping":
                try {
                  ws?.send('{"t":"pong"}');
                } catch {
                  // The close event follows.
                }
                break;
              default:
                break;
            }
          } else {
            this.onFrame(conn, f);
          }
        }
      };

      let loadedDevice: string | null = null;
      let askedResume = false;
      void (async () => {
        try {
          loadedDevice = (await this.store.load()) ?? null;
        } catch (e) {
          conn.finish({ kind: "fatal", err: new DeviceStoreError(String((e as Error)?.message ?? e)) });
          return;
        }
        let token: string | undefined = this.opts.token;
        if (this.opts.getToken) {
          try {
            token = await this.opts.getToken();
          } catch (e) {
            conn.finish({ kind: "lost", reason: `getToken: ${(e as Error)?.message ?? e}`, welcomed: false });
            return;
          }
        }
        if (this.stoppedWith) conn.finish({ kind: "stop" });
        if (done) return;
        try {
          ws = new (this.WS as WebSocketConstructor)(this.url);
        } catch (e) {
          // A malformed URL: no later attempt can succeed either.
          conn.finish({ kind: "fatal", err: new ConnectError(`open ${this.url}: ${(e as Error)?.message ?? e}`) });
          return;
        }
        conn.ws = ws;
        this.conn = conn;
        ws.onopen = () => {
          const hello: Record<string, unknown> = { t: "hello", v: 1, reconnect_timeout_ms: this.reconnectTimeoutMs };
          if (token) hello.token = token;
          if (this.opts.devUid) hello.uid = this.opts.devUid;
          if (loadedDevice) hello.device = loadedDevice;
          askedResume = this.reconnectTimeoutMs > 0 && this.sessionKeys !== null;
          if (askedResume && this.sessionKeys) {
            hello.resume = { session: this.sessionKeys.session, key: this.sessionKeys.key };
          }
          try {
            ws?.send(JSON.stringify(hello));
          } catch (e) {
            conn.finish({ kind: "lost", reason: `send hello: ${(e as Error)?.message ?? e}`, welcomed: false });
          }
        };
        ws.onmessage = (ev) => {
          const d = ev.data;
          if (typeof d === "string") onText(d);
          else lastHeard = Date.now();
        };
        ws.onerror = () => {
          // The close event follows with the code.
        };
        ws.onclose = (ev) => {
          const code = ev.code;
          const reason = ev.reason ?? "";
          if (FATAL_CLOSE.includes(code)) {
            const r = refused ?? { code: `close ${code}`, msg: reason };
            conn.finish({ kind: "fatal", err: new RefusedError(r.code, r.msg) });
          } else if (conn.welcomed) {
            conn.finish({ kind: "lost", reason: `server closed the connection: ${code} ${reason}`.trim(), welcomed: true });
          } else {
            conn.finish({ kind: "lost", reason: `closed ${code} before welcome ${reason}`.trim(), welcomed: false });
          }
        };
      })();
    });
  }

  /** Applies a welcome: resend after a resume, or recover after a new session. */
  private onWelcome(c: Conn, w: ServerFrame, askedResume: boolean): void {
    const hadSession = this.sessionKeys !== null;
    this.sessionKeys = { session: String(w.session), key: String(w.key) };
    const hb = Number(w.heartbeat_ms ?? 0);
    this.hbLimitMs = hb > 0 ? hb + this.heartbeatGraceMs : 3_600_000;
    const out: string[] = [];
    if (askedResume && w.resumed === true) {
      this.emit({ type: "connected", resumed: true });
      // Everything unanswered goes again with its own seq: above acked_seq it is applied now,
      // at or below it the server answers from its cache (or a bare dup, see onOk).
      this.nextSeq = Math.max(this.nextSeq, Number(w.acked_seq ?? 0) + 1);
      for (const [seq, p] of this.pending) {
        p.resent = true;
        out.push(Client.frame(seq, p.req));
      }
      // A reloaded page learns the subscriptions its session kept.
      if (w.subs && typeof w.subs === "object") {
        for (const [chan, v] of Object.entries(w.subs as Record<string, { o?: number }>)) {
          if (!this.subs.has(chan)) this.subs.set(chan, Number(v?.o ?? 0));
        }
      }
    } else {
      this.emit({ type: "connected", resumed: false });
      if (askedResume) {
        const reason = typeof w.resume_error === "string" ? w.resume_error : "not resumed";
        this.emit({ type: "resumeFailed", reason });
      }
      if (hadSession) {
        // A new session: nothing of the old one exists. Resubscribe from what was handed on,
        // then resend every unanswered request under a new seq.
        const old = [...this.pending.values()];
        this.pending.clear();
        const pendingSubs = new Set(old.filter((p) => p.req.t === "sub").map((p) => (p.req as { chan: string }).chan));
        for (const [chan, base] of this.subs) {
          if (pendingSubs.has(chan)) continue;
          const from = this.dedupe.last(`chan:${chan}`) ?? base;
          const req: Request = { t: "sub", chan, from };
          const seq = this.enqueue({ req, resolve: null, reject: null, slot: false, resent: false, reissues: 0 });
          out.push(Client.frame(seq, req));
        }
        for (const p of old) {
          p.resent = true;
          const seq = this.enqueue(p);
          out.push(Client.frame(seq, p.req));
        }
      } else {
        // The first session: requests made before it were never sent.
        for (const [seq, p] of this.pending) out.push(Client.frame(seq, p.req));
      }
    }
    this.persist();
    if (out.length > 0) this.send(c, out.join("\n"));
    // Acks are re-sent after every welcome: the server may have persisted positions lazily.
    for (const v of this.ackPos.values()) v.dirty = true;
    this.flushAcks();
  }

  private onFrame(c: Conn, f: ServerFrame): void {
    switch (f.t) {
      case "ok":
        return this.onOk(c, f);
      case "err":
        return this.onErr(c, f);
      case "msg": {
        const s = String(f.s);
        const o = Number(f.o);
        if (!this.dedupe.accept(s, o)) return; // a redelivery
        this.deliveryQueue.push({
          stream: s,
          offset: o,
          id: String(f.id ?? ""),
          from: String(f.from ?? ""),
          ts: Number(f.ts ?? 0),
          body: f.body === undefined ? null : f.body,
        });
        return;
      }
      case "gap": {
        const s = String(f.s);
        const to = Number(f.to);
        if (this.dedupe.acceptGap(s, to)) {
          this.emit({ type: "gap", stream: s, from: Number(f.from), to });
          this.persist();
        }
        return;
      }
      case "evicted": {
        const err = new EvictedError(String(f.reason) as EvictReason, (f.by ?? {}) as EvictedBy);
        this.emit({ type: "evicted", reason: err.reason, by: err.by });
        this.clearSaved();
        this.stop(err);
        c.finish({ kind: "stop" });
        return;
      }
      case "ping":
        return this.send(c, '{"t":"pong"}');
      default:
        return;
    }
  }

  private onOk(c: Conn, ok: ServerFrame): void {
    const seq = Number(ok.seq);
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    const bareDup = ok.dup === true && ok.id === undefined && ok.s === undefined && ok.o === undefined;
    if (bareDup) {
      // The server processed this seq but no longer has its answer: the outcome is unknown.
      // Reissue under a new seq; a pub keeps its idempotency id, so it is stored at most once.
      p.resent = true;
      const n = this.enqueue(p);
      return this.send(c, Client.frame(n, p.req));
    }
    let answer: Answer;
    switch (p.req.t) {
      case "pub":
        answer = {
          id: String(ok.id ?? ""),
          stream: String(ok.s ?? ""),
          offset: Number(ok.o ?? 0),
          dup: ok.dup === true,
          ...(typeof ok.online === "number" ? { online: ok.online } : {}),
        };
        break;
      case "sub": {
        const base = Number(ok.o ?? 0);
        this.subs.set(p.req.chan, base);
        if (p.req.from !== undefined && p.resolve !== null && !p.resent) {
          // The app asked for a replay: hand those offsets on again.
          this.dedupe.set(`chan:${p.req.chan}`, p.req.from);
          this.persist();
        }
        answer = { stream: typeof ok.s === "string" ? ok.s : `chan:${p.req.chan}`, offset: base };
        break;
      }
      case "unsub":
        this.forgetChan(p.req.chan);
        answer = undefined;
        break;
    }
    this.settle(p, { ok: answer });
  }

  private onErr(c: Conn, e: ServerFrame): void {
    if (typeof e.seq !== "number") return; // a connection-level error; a close follows if fatal
    const p = this.pending.get(e.seq);
    if (!p) return;
    this.pending.delete(e.seq);
    const code = String(e.code);
    const msg = String(e.msg ?? "");
    if (code === "bad_frame" && p.resent && p.reissues < MAX_REISSUES) {
      // "seq already being processed": its answer went to the old connection. Reissue under
      // a new seq (a pub keeps its idempotency id).
      p.reissues++;
      const n = this.enqueue(p);
      return this.send(c, Client.frame(n, p.req));
    }
    if (p.req.t === "unsub" && p.resent && code === "not_subscribed") {
      // A resent unsub that finds nothing to remove did its job earlier.
      this.forgetChan(p.req.chan);
      return this.settle(p, { ok: undefined });
    }
    if (p.reject === null) {
      // A resubscribe the SDK made itself after a failed resume: nobody awaits it, so say it.
      console.warn(`herald-client: resubscribing after a failed resume was refused: ${code}: ${msg}`);
    }
    this.settle(p, { err: new ServerError(code, msg) });
  }

  private forgetChan(chan: string): void {
    this.subs.delete(chan);
    this.ackPos.delete(`chan:${chan}`);
  }

  /** The app took `d` from the deliveries: mark it for acknowledgement. */
  private taken(d: Delivery): void {
    this.ackPos.set(d.stream, { o: d.offset, dirty: true });
    this.sinceFlush++;
    this.persist();
    if (this.sinceFlush >= this.ackBatch) {
      this.flushAcks();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        this.flushAcks();
      }, this.ackIntervalMs);
    }
  }

  private flushAcks(): void {
    if (this.ackTimer !== null) {
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
    }
    const c = this.conn;
    if (!c || !c.welcomed || c.ws.readyState !== OPEN) return; // sent after the next welcome
    this.sinceFlush = 0;
    const frames: string[] = [];
    for (const [s, v] of this.ackPos) {
      if (!v.dirty) continue;
      v.dirty = false;
      frames.push(JSON.stringify({ t: "ack", s, o: v.o }));
    }
    if (frames.length > 0) this.send(c, frames.join("\n"));
  }

  /** Saves the session and positions in a store that keeps them (a tab's sessionStorage). */
  private persist(): void {
    if (!this.store.saveSession || !this.sessionKeys || this.stoppedWith) return;
    const positions: Record<string, number> = {};
    for (const [s, o] of this.dedupe.entries()) positions[s] = o;
    try {
      this.store.saveSession({ ...this.sessionKeys, positions });
    } catch {
      // Quota or privacy mode: the session is then not resumed after a reload.
    }
  }

  private clearSaved(): void {
    try {
      this.store.saveSession?.(null);
    } catch {
      // Nothing to clear.
    }
  }

  /** A reloaded page continues the saved session: resume it, drop what was handed on. */
  private restore(s: SavedSession): void {
    this.sessionKeys = { session: s.session, key: s.key };
    for (const [stream, o] of Object.entries(s.positions)) {
      if (typeof o !== "number") continue;
      this.dedupe.set(stream, o);
      this.ackPos.set(stream, { o, dirty: true });
    }
  }

  /** Stops for good: fails every waiting request with `why`, then reports `closed`. */
  private stop(why: HeraldError): void {
    if (this.stoppedWith) return;
    this.stoppedWith = why;
    this.slots.close(why);
    for (const p of this.pending.values()) {
      p.slot = false;
      p.reject?.(why);
    }
    this.pending.clear();
    if (this.ackTimer !== null) {
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
    }
    this.emit({ type: "closed" });
    this.eventQueue.end();
    this.deliveryQueue.end();
    this.listeners.clear();
    this.resolveClosed();
  }
}

function nonNegative(name: string, v: number): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
    throw new InvalidError(`${name} must be a finite number >= 0, got ${v}`);
  }
  return v;
}

/** Connects; resolves once the first `welcome` arrived. A failure of that first attempt rejects. */
export function connect(opts: ClientOptions): Promise<Client> {
  let c: Client;
  try {
    c = new Client(opts);
  } catch (e) {
    return Promise.reject(e);
  }
  return c.start();
}
