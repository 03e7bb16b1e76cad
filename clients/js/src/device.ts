/** What a reload needs to resume its session: the session, its key and the positions handed on. */
export interface SavedSession {
  session: string;
  key: string;
  /** Last offset handed on to the application, per stream. */
  positions: Record<string, number>;
}

type MaybePromise<T> = T | Promise<T>;

/**
 * Loads and saves the device id. A store may also keep the session (`loadSession`/`saveSession`,
 * synchronous), so that a new instance of the client (a reloaded page) resumes it.
 */
export interface DeviceStore {
  load(): MaybePromise<string | null | undefined>;
  save(device: string): MaybePromise<void>;
  loadSession?(): SavedSession | null;
  saveSession?(s: SavedSession | null): void;
}

/** Keeps the device in memory only (the default: the server allocates one per client). */
export class MemoryDeviceStore implements DeviceStore {
  constructor(private device: string | null = null) {}
  load(): string | null {
    return this.device;
  }
  save(device: string): void {
    this.device = device;
  }
}

/** The part of the Web Storage API the tab store uses (`sessionStorage` has it). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of the Web Locks API the tab store uses (`navigator.locks` has it). */
export interface LocksLike {
  request(
    name: string,
    options: { ifAvailable?: boolean; signal?: AbortSignal },
    callback: (lock: unknown) => Promise<unknown> | unknown,
  ): Promise<unknown>;
}

export interface TabDeviceStoreOptions {
  /** Names this app's entries, so two apps on one origin do not share (default `"herald"`). */
  name?: string;
  /** Default: `globalThis.sessionStorage`. */
  storage?: StorageLike;
  /** Default: `globalThis.navigator.locks` when present. */
  locks?: LocksLike | null;
  /**
   * How long to wait for a device's lock held by someone else before deciding that a live
   * duplicate tab holds it (default 1000 ms). A reloaded page may run before the old page
   * released the lock; the wait covers that.
   */
  lockWaitMs?: number;
}

/**
 * A device per browser tab, kept in `sessionStorage`: a reload keeps the tab's device and its
 * session (it resumes, and nothing it already handed on is handed on again), while two tabs
 * have two devices, so under `identity.policy = "multi"` neither evicts the other.
 *
 * A tab duplicated by the browser starts with a copy of the original's `sessionStorage`. To
 * keep that copy from taking over the original's session (which would evict it with
 * `resumed_elsewhere`), the store holds a Web Lock named after the device while the page lives:
 * a tab that finds the lock held by a live tab forgets the copied device and session and gets
 * a device of its own. See docs/client-js.md, "Device ids in browsers".
 */
export class TabDeviceStore implements DeviceStore {
  private readonly storage: StorageLike;
  private readonly locks: LocksLike | null;
  private readonly deviceKey: string;
  private readonly sessionKey: string;
  private readonly lockWaitMs: number;
  private held: string | null = null;

  constructor(opts: TabDeviceStoreOptions = {}) {
    const name = opts.name ?? "herald";
    const g = globalThis as { sessionStorage?: StorageLike; navigator?: { locks?: LocksLike } };
    const storage = opts.storage ?? g.sessionStorage;
    if (!storage) throw new Error("TabDeviceStore needs sessionStorage (or opts.storage)");
    this.storage = storage;
    this.locks = opts.locks === undefined ? (g.navigator?.locks ?? null) : opts.locks;
    this.deviceKey = `${name}:device`;
    this.sessionKey = `${name}:session`;
    this.lockWaitMs = opts.lockWaitMs ?? 1000;
  }

  async load(): Promise<string | null> {
    const device = this.storage.getItem(this.deviceKey);
    if (!device) return null;
    if (this.held === device) return device;
    if (await this.hold(device)) return device;
    // Another live tab (a duplicate of this one) holds this device: start fresh.
    this.storage.removeItem(this.deviceKey);
    this.storage.removeItem(this.sessionKey);
    return null;
  }

  async save(device: string): Promise<void> {
    this.storage.setItem(this.deviceKey, device);
    if (this.held !== device) await this.hold(device);
  }

  loadSession(): SavedSession | null {
    const raw = this.storage.getItem(this.sessionKey);
    if (!raw) return null;
    try {
      const s = JSON.parse(raw) as SavedSession;
      if (typeof s.session === "string" && typeof s.key === "string") {
        return { session: s.session, key: s.key, positions: s.positions ?? {} };
      }
    } catch {
      // A damaged entry is the same as none.
    }
    return null;
  }

  saveSession(s: SavedSession | null): void {
    if (s) this.storage.setItem(this.sessionKey, JSON.stringify(s));
    else this.storage.removeItem(this.sessionKey);
  }

  /** Takes the device's lock for the life of the page; false if another tab keeps it. */
  private async hold(device: string): Promise<boolean> {
    if (!this.locks) {
      this.held = device;
      return true;
    }
    const name = `herald-device:${device}`;
    const take = (options: { ifAvailable?: boolean; signal?: AbortSignal }) =>
      new Promise<boolean>((resolve) => {
        (this.locks as LocksLike)
          .request(name, options, (lock) => {
            if (!lock) {
              resolve(false);
              return undefined;
            }
            this.held = device;
            resolve(true);
            // Held until the page goes away.
            return new Promise<void>(() => {});
          })
          // Aborted: someone else kept it for the whole wait.
          .catch(() => resolve(false));
      });
    if (await take({ ifAvailable: true })) return true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.lockWaitMs);
    const got = await take({ signal: abort.signal });
    clearTimeout(timer);
    return got;
  }
}
