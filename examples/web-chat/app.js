// A chat page that keeps working across a network cut: lines typed while the network is down
// wait in the SDK's recovery buffer and are sent on reconnect; nothing is shown twice or lost;
// a reload resumes the tab's session. Settings come from the page's query string:
//   ?server=ws://127.0.0.1:7070/v1/ws&uid=alice&room=lobby
import { connect, TabDeviceStore } from "./sdk/index.js";

const q = new URLSearchParams(location.search);
const server = q.get("server") ?? "ws://127.0.0.1:7070/v1/ws";
const uid = q.get("uid") ?? `guest-${Math.floor(Math.random() * 1e6)}`;
const room = q.get("room") ?? "lobby";
const $ = (id) => document.getElementById(id);
$("room").textContent = room;
$("uid").textContent = uid;

function line(html, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  li.innerHTML = html;
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

function showState(e) {
  const st = $("state");
  switch (e.type) {
    case "connecting": st.textContent = "connecting…"; st.className = "down"; break;
    case "connected": st.textContent = e.resumed ? "connected (session resumed)" : "connected"; st.className = "up"; break;
    case "disconnected": st.textContent = `offline: ${e.reason}`; st.className = "down"; break;
    case "reconnecting": st.textContent = `offline; retry ${e.attempt} in ${e.nextIn} ms`; st.className = "down"; break;
    case "resumeFailed": line(`(the session could not be resumed: ${esc(e.reason)}; catching up from history)`, "note"); break;
    case "gap": line(`(messages ${e.from}–${e.to} expired before this page could read them)`, "note"); break;
    case "evicted": line(`(signed out: ${esc(e.reason)}; reload to sign in again)`, "note"); break;
    case "closed": st.textContent = "stopped"; st.className = "stopped"; $("text").disabled = true; break;
  }
}

const client = await connect({
  url: server,
  devUid: uid, // a dev-mode server; pass `getToken: () => fetch("/token").then(r => r.text())` in production
  deviceStore: new TabDeviceStore({ name: `web-chat:${uid}` }),
  onEvent: showState,
});
window.chat = client; // for poking at it from the console

client.onDelivery((d) => {
  if (d.stream !== `chan:${room}`) return;
  line(`<span class="meta">#${d.offset}</span> <b>${esc(d.from)}</b>: ${esc(d.body?.text ?? JSON.stringify(d.body))}`);
});
// Replay the room's retained history, then live.
await client.subscribe(room, 0);

$("text").disabled = false;
$("form").querySelector("button").disabled = false;
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  const pending = line(`<span class="meta">sending…</span> ${esc(text)}`, "note");
  try {
    // Resolves once the message is durable, even if the network is down meanwhile.
    const p = await client.publish(`chan:${room}`, { text });
    pending.remove();
    void p;
  } catch (e) {
    pending.innerHTML = `not sent (${esc(e.message)}): ${esc(text)}`;
  }
});
