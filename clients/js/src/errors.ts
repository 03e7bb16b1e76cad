/** Who evicted a session (from the server's `evicted.by`). */
export interface EvictedBy {
  conn?: string;
  addr?: string;
}

/** Why a session was evicted. */
export type EvictReason = "replaced" | "kicked" | "device_limit" | "resumed_elsewhere" | (string & {});

/** The base of every error the client returns; `kind` tells them apart without `instanceof`. */
export class HeraldError extends Error {
  constructor(
    readonly kind: "connect" | "refused" | "server" | "evicted" | "closed" | "invalid" | "device_store",
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The first connection could not be made (network, handshake, or no `welcome`). */
export class ConnectError extends HeraldError {
  constructor(readonly reason: string) {
    super("connect", `could not connect: ${reason}`);
  }
}

/** The server refused the login (bad token, `identity_in_use`, close 4000/4003/4010); the client stopped. */
export class RefusedError extends HeraldError {
  constructor(
    readonly code: string,
    readonly msg: string,
  ) {
    super("refused", `login refused: ${code}: ${msg}`);
  }
}

/** The server answered the request with `err` (`forbidden`, `bad_target`, `too_large`, …). */
export class ServerError extends HeraldError {
  constructor(
    readonly code: string,
    readonly msg: string,
  ) {
    super("server", `server error ${code}: ${msg}`);
  }
}

/** The session was evicted; the client does not reconnect on its own. */
export class EvictedError extends HeraldError {
  constructor(
    readonly reason: EvictReason,
    readonly by: EvictedBy,
  ) {
    super(
      "evicted",
      `evicted (${reason}) by ${describeBy(by)}: this client stopped and will not reconnect on its own`,
    );
  }
}

/** `close()` was called, or the client stopped for another reason. */
export class ClosedError extends HeraldError {
  constructor() {
    super("closed", "client closed");
  }
}

/** A bad argument (target, channel name, option). */
export class InvalidError extends HeraldError {
  constructor(readonly reason: string) {
    super("invalid", `invalid argument: ${reason}`);
  }
}

/** The device store could not load or save the device id. */
export class DeviceStoreError extends HeraldError {
  constructor(readonly reason: string) {
    super("device_store", `device store: ${reason}`);
  }
}

function describeBy(by: EvictedBy): string {
  if (by.conn && by.addr) return `connection ${by.conn} from ${by.addr}`;
  if (by.conn) return `connection ${by.conn}`;
  if (by.addr) return `a connection from ${by.addr}`;
  return "the server";
}
