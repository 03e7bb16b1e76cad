// A fault-injecting TCP proxy: listens on 127.0.0.1:0, forwards each connection to the current
// upstream (a real herald), and breaks the network on demand: cut every connection, stall them
// (half-open: no byte moves, nothing is closed), add latency, throttle, or refuse new
// connections. Every fault is counted.
import net from "node:net";

export class Proxy {
  static async start(upstream) {
    const p = new Proxy(upstream);
    await new Promise((resolve) => p.server.listen(0, "127.0.0.1", resolve));
    p.port = p.server.address().port;
    return p;
  }

  constructor(upstream) {
    this.upstream = upstream;
    this.refusing = false;
    this.delayMs = 0;
    this.throttleBps = 0;
    this.conns = new Set();
    this.faults = { cuts: 0, stalls: 0, delays: 0, throttles: 0, refused: 0, kills: 0 };
    this.server = net.createServer((down) => this.accept(down));
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  setUpstream(addr) {
    this.upstream = addr;
  }

  refuse(on) {
    this.refusing = on;
  }

  accept(down) {
    if (this.refusing) {
      this.faults.refused++;
      down.destroy();
      return;
    }
    const [host, port] = splitAddr(this.upstream);
    const up = net.connect({ host, port });
    const c = { down, up, stalled: false, held: [] };
    this.conns.add(c);
    down.setNoDelay(true);
    up.setNoDelay(true);
    const forward = (from, to) => {
      from.on("data", (buf) => {
        if (c.stalled) {
          c.held.push([to, buf]);
          return;
        }
        // Latency and throttling both hold the source until the chunk may go, so order is kept.
        const wait = this.delayMs + (this.throttleBps > 0 ? Math.ceil((buf.length * 1000) / this.throttleBps) : 0);
        if (wait > 0) {
          from.pause();
          setTimeout(() => {
            if (!to.destroyed) to.write(buf);
            from.resume();
          }, wait);
        } else if (!to.destroyed) {
          to.write(buf);
        }
      });
    };
    forward(down, up);
    forward(up, down);
    const end = () => {
      this.conns.delete(c);
      down.destroy();
      up.destroy();
    };
    down.on("close", end);
    up.on("close", end);
    down.on("error", end);
    up.on("error", end);
  }

  /** Cuts every live connection (both sides see it closed). */
  cutAll() {
    for (const c of [...this.conns]) {
      this.faults.cuts++;
      this.conns.delete(c);
      c.down.destroy();
      c.up.destroy();
    }
  }

  /** Every live connection stops moving bytes, nothing is closed (a half-open network). */
  stallAll() {
    for (const c of this.conns) {
      if (!c.stalled) this.faults.stalls++;
      c.stalled = true;
    }
  }

  /** Stalled connections move again (what was held is delivered, in order). */
  unstallAll() {
    for (const c of this.conns) {
      c.stalled = false;
      for (const [to, buf] of c.held.splice(0)) if (!to.destroyed) to.write(buf);
    }
  }

  /** Latency added to every chunk in both directions (0 = none). */
  delay(ms) {
    if (ms > 0 && this.delayMs === 0) this.faults.delays++;
    this.delayMs = ms;
  }

  /** Bytes per second per direction and connection (0 = unlimited). */
  throttle(bps) {
    if (bps > 0 && this.throttleBps === 0) this.faults.throttles++;
    this.throttleBps = bps;
  }

  /** Counts a kill -9 of the upstream, for the figures. */
  restarted(addr) {
    this.faults.kills++;
    this.upstream = addr;
  }

  get totalFaults() {
    return Object.values(this.faults).reduce((a, b) => a + b, 0);
  }

  async close() {
    this.cutAll();
    await new Promise((r) => this.server.close(r));
  }
}

function splitAddr(addr) {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i), Number(addr.slice(i + 1))];
}

/** A small seeded PRNG (mulberry32) so a failing chaos run can be replayed. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
