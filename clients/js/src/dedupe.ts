/**
 * The last offset handed on to the application, per stream. A redelivered offset at or below
 * it is dropped; a gap moves it past the range it announces.
 */
export class Dedupe {
  private readonly lastSeen = new Map<string, number>();

  /** True if offset `o` of stream `s` is new (and records it). */
  accept(s: string, o: number): boolean {
    const last = this.lastSeen.get(s);
    if (last !== undefined && o <= last) return false;
    this.lastSeen.set(s, o);
    return true;
  }

  /** True if a gap ending at `to` is new (announce it), and moves the position to `to`. */
  acceptGap(s: string, to: number): boolean {
    return this.accept(s, to);
  }

  last(s: string): number | undefined {
    return this.lastSeen.get(s);
  }

  /** Sets the position (an explicit replay hands those offsets on again). */
  set(s: string, o: number): void {
    this.lastSeen.set(s, o);
  }

  entries(): Array<[string, number]> {
    return [...this.lastSeen.entries()];
  }
}
