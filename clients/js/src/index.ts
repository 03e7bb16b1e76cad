/**
 * herald-client: the TypeScript SDK for herald, for browsers and Node.
 *
 * A {@link Client} keeps one logical session with a herald server across network cuts,
 * server restarts and failed resumes: requests are buffered until answered and resent after a
 * reconnect (every publish carries an idempotency id, so it is applied once); deliveries reach
 * the application exactly once, in per-stream order; every state change is an event, including
 * what could not be recovered (`resumeFailed`, `gap`, `evicted`). See docs/client-js.md.
 *
 * ```ts
 * import { connect } from "herald-client";
 * const client = await connect({ url: "ws://127.0.0.1:7070/v1/ws", devUid: "alice" });
 * await client.subscribe("room1");
 * await client.publish("chan:room1", { text: "hi" });
 * for await (const d of client.deliveries()) console.log(d.stream, d.offset, d.body);
 * ```
 */
export { Client, connect, newId } from "./client.js";
export type {
  ClientOptions,
  ConnectionEvent,
  Delivery,
  Published,
  SessionInfo,
  Subscribed,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { ReconnectStrategy } from "./backoff.js";
export { Dedupe } from "./dedupe.js";
export { AsyncQueue, Slots } from "./queue.js";
export { MemoryDeviceStore, TabDeviceStore } from "./device.js";
export type { DeviceStore, LocksLike, SavedSession, StorageLike, TabDeviceStoreOptions } from "./device.js";
export {
  ClosedError,
  ConnectError,
  DeviceStoreError,
  EvictedError,
  HeraldError,
  InvalidError,
  RefusedError,
  ServerError,
} from "./errors.js";
export type { EvictReason, EvictedBy } from "./errors.js";
