// A scripted server for the unit tests: a WebSocket class whose sockets the test drives by
// hand (open, frames from the server, close), recording every frame the client sends.
export class FakeServer {
  constructor() {
    this.sockets = [];
    const server = this;
    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        this.closedByClient = null;
        server.sockets.push(this);
      }
      send(data) {
        if (this.readyState !== 1) throw new Error("not open");
        for (const line of data.split("\n")) this.sent.push(JSON.parse(line));
      }
      close(code) {
        this.closedByClient = code ?? 1000;
        this.readyState = 3;
      }
      // --- the server side -----------------------------------------------------------------
      open() {
        this.readyState = 1;
        this.onopen?.({});
      }
      frames(...objs) {
        this.onmessage?.({ data: objs.map((o) => JSON.stringify(o)).join("\n") });
      }
      drop(code = 1006, reason = "") {
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
      sentOf(t) {
        return this.sent.filter((f) => f.t === t);
      }
    };
  }
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

/** Lets every pending promise callback run (setImmediate is left unmocked). */
export async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

export function welcome(extra = {}) {
  return {
    t: "welcome",
    session: "S1",
    key: "K1",
    conn: "C1",
    uid: "alice",
    device: "d1",
    resumed: false,
    acked_seq: 0,
    heartbeat_ms: 25000,
    reconnect_timeout_ms: 60000,
    subs: {},
    limits: {},
    ...extra,
  };
}

/** Collects the events of a client as they come. */
export function recorder(client) {
  const seen = [];
  client.onEvent((e) => seen.push(e));
  return seen;
}

/**
 * Connects a client to a FakeServer and completes the first handshake; returns
 * { client, events, ws } where `events` collects every event from the first on.
 */
export async function started(connect, server, opts = {}, welcomeExtra = {}) {
  const events = [];
  const p = connect({ url: "ws://fake/v1/ws", devUid: "alice", WebSocket: server.WebSocket, onEvent: (e) => events.push(e), ...opts });
  await settle();
  const ws = server.last;
  ws.open();
  ws.frames(welcome(welcomeExtra));
  const client = await p;
  return { client, events, ws };
}

export const types = (events) => events.map((e) => e.type);
