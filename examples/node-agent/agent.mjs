#!/usr/bin/env node
// A backend agent that reacts to client messages, run as several instances. Clients send
// requests to the `agent` user's inbox; every instance logs in as `agent` with its OWN device
// (a FileDeviceStore in its own directory: never a shared device, or the instances would evict
// each other), so each receives the inbox, and instance i of n handles the messages whose
// offset is i modulo n. The answer goes to the sender's inbox; the SDK publishes it with an
// idempotency id, so a resend after a reconnect is stored once.
//
//   herald serve --dev &
//   node examples/node-agent/agent.mjs 0 2 &        # instance 0 of 2
//   node examples/node-agent/agent.mjs 1 2 &        # instance 1 of 2
//   curl -XPOST localhost:7070/v1/publish -H 'content-type: application/json' \
//        -d '{"to":"user:agent","from":"carol","body":{"ask":"ping"}}'
//
// Each instance keeps its device id in $HERALD_AGENT_DIR/instance-<i>/herald-device
// (default: a folder under the system temp dir, never the current directory). HERALD_URL
// overrides the server URL (default ws://127.0.0.1:7070/v1/ws).
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, FileDeviceStore } from "../../clients/js/dist/node.js";

const instance = Number(process.argv[2] ?? 0);
const of = Math.max(1, Number(process.argv[3] ?? 1));
if (!Number.isInteger(instance) || instance < 0 || instance >= of) {
  console.error(`usage: agent.mjs INSTANCE COUNT (0 <= INSTANCE < COUNT), got ${process.argv.slice(2).join(" ")}`);
  process.exit(2);
}
const url = process.env.HERALD_URL ?? "ws://127.0.0.1:7070/v1/ws";
const dir = join(process.env.HERALD_AGENT_DIR ?? join(tmpdir(), "herald-node-agent"), `instance-${instance}`);

const client = await connect({
  url,
  devUid: "agent",
  deviceStore: new FileDeviceStore(dir),
  onEvent: (e) => {
    if (e.type === "evicted") {
      console.error(`evicted (${e.reason}): another process uses this device id; stopping`);
      process.exitCode = 2;
    } else if (e.type !== "closed") {
      console.log(`event ${JSON.stringify(e)}`);
    }
  },
});
const device = client.session()?.device;
console.log(`agent instance ${instance}/${of} on device ${device} (kept in ${dir})`);

for (const sig of ["SIGINT", "SIGTERM"]) {
  // Ends the process without `bye`: the session stays resumable and the device keeps its
  // inbox position, so a restarted instance continues where this one stopped.
  process.once(sig, () => process.exit());
}

for await (const d of client.deliveries()) {
  if (d.offset % of !== instance || d.from.startsWith("$")) continue;
  const reply = { re: d.id, by: device, answer: d.body };
  try {
    const p = await client.publish(`user:${d.from}`, reply);
    console.log(`answered ${d.id} from ${d.from} (stored at ${p.stream} #${p.offset})`);
  } catch (e) {
    console.error(`could not answer ${d.id}: ${e.message}`);
  }
}
