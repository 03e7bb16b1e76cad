/**
 * Reconnect delays. The default is exponential backoff with full jitter: before attempt `n`
 * the client waits a uniformly random time in `[0, min(max, min · 2^(n-1))]`.
 */
export class ReconnectStrategy {
  private constructor(
    private readonly kind: "backoff" | "fixed" | "custom",
    private readonly minMs: number,
    private readonly maxMs: number,
    private readonly fn: ((attempt: number) => number) | null,
    private readonly random: () => number,
  ) {}

  /** Exponential backoff with full jitter from `minMs` up to `maxMs` (default 100 ms → 5 s). */
  static exponential(minMs = 100, maxMs = 5000, random: () => number = Math.random): ReconnectStrategy {
    checkMs("minMs", minMs);
    checkMs("maxMs", maxMs);
    return new ReconnectStrategy("backoff", minMs, Math.max(minMs, maxMs), null, random);
  }

  /** The same delay before every attempt. */
  static fixed(ms: number): ReconnectStrategy {
    checkMs("ms", ms);
    return new ReconnectStrategy("fixed", ms, ms, null, Math.random);
  }

  /** `fn(attempt)` gives the delay in ms before attempt `attempt` (1-based). */
  static custom(fn: (attempt: number) => number): ReconnectStrategy {
    return new ReconnectStrategy("custom", 0, 0, fn, Math.random);
  }

  /** The largest delay attempt `attempt` can get. */
  ceiling(attempt: number): number {
    switch (this.kind) {
      case "backoff": {
        const shift = Math.min(Math.max(attempt - 1, 0), 30);
        return Math.min(this.maxMs, this.minMs * 2 ** shift);
      }
      case "fixed":
        return this.minMs;
      case "custom":
        return Math.max(0, (this.fn as (a: number) => number)(attempt));
    }
  }

  /** The delay before attempt `attempt` (1-based), in ms. */
  delay(attempt: number): number {
    const ceil = this.ceiling(attempt);
    if (this.kind !== "backoff") return ceil;
    return Math.floor(this.random() * (ceil + 1));
  }

  toString(): string {
    switch (this.kind) {
      case "backoff":
        return `Exponential(${this.minMs}ms..${this.maxMs}ms, full jitter)`;
      case "fixed":
        return `Fixed(${this.minMs}ms)`;
      case "custom":
        return "Custom";
    }
  }
}

function checkMs(name: string, v: number): void {
  if (!Number.isFinite(v) || v < 0) {
    throw new RangeError(`${name} must be a finite number of milliseconds >= 0, got ${v}`);
  }
}
