/** An unbounded FIFO that one consumer reads as an async iterator; ends after `end()`. */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{ resolve: (r: IteratorResult<T>) => void; mark: boolean }> = [];
  private ended = false;

  constructor(private readonly onTaken: (item: T) => void = () => {}) {}

  push(item: T): void {
    if (this.ended) return;
    const w = this.waiters.shift();
    if (w) {
      if (w.mark) this.onTaken(item);
      w.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** No more items; readers get what is queued, then `done`. */
  end(): void {
    this.ended = true;
    for (const w of this.waiters.splice(0)) w.resolve({ value: undefined, done: true });
  }

  get size(): number {
    return this.items.length;
  }

  /** The next item if one is queued. */
  tryNext(): T | undefined {
    if (this.items.length === 0) return undefined;
    const item = this.items.shift() as T;
    this.onTaken(item);
    return item;
  }

  next(): Promise<IteratorResult<T>> {
    return this.take(true);
  }

  /** Like `next`, without marking the item taken (the caller does, when it is done with it). */
  nextUntaken(): Promise<IteratorResult<T>> {
    return this.take(false);
  }

  private take(mark: boolean): Promise<IteratorResult<T>> {
    if (this.items.length > 0) {
      const item = this.items.shift() as T;
      if (mark) this.onTaken(item);
      return Promise.resolve({ value: item, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiters.push({ resolve, mark }));
  }

  return(): Promise<IteratorResult<T>> {
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}

/** The recovery buffer: `size` slots, one per unanswered request; `acquire` waits for room. */
export class Slots {
  private used = 0;
  private readonly waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private closedWith: Error | null = null;

  constructor(readonly size: number) {}

  get inUse(): number {
    return this.used;
  }

  acquire(): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.used < this.size && this.waiters.length === 0) {
      this.used++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  release(): void {
    const w = this.waiters.shift();
    if (w) {
      w.resolve();
    } else if (this.used > 0) {
      this.used--;
    }
  }

  /** Fails every waiter and every later `acquire` with `err`. */
  close(err: Error): void {
    this.closedWith = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }
}
