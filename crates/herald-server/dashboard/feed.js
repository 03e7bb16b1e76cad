// The event feed, GET /v1/events/stream, read with fetch (an EventSource cannot send the API
// key). It keeps the id of the last event it saw and reconnects with ?after=<id>, so after a
// network error or a server restart nothing is lost and nothing is repeated: the server sends
// the stored events after that id first, then live ones, in id order.

import { authHeaders, reportUnauthorized } from './api.js';

/// Wait before reconnecting after the stream ended or failed.
const RETRY_MS = 1000;

/// Opens the feed. `after`: the last event id already seen (null: only events from now on).
/// Calls onEvent(event) for each event, onLagged(info) when the server could not read a range,
/// onStatus('live' | 'reconnecting', detail). Returns { close(), cursor() }.
export function openFeed({ after = null, onEvent, onLagged = () => {}, onStatus = () => {} }) {
  let cursor = after;
  let stopped = false;
  let ctl = null;

  async function once() {
    ctl = new AbortController();
    const url = cursor === null ? '/v1/events/stream' : `/v1/events/stream?after=${cursor}`;
    const res = await fetch(url, { headers: authHeaders({ Accept: 'text/event-stream' }), signal: ctl.signal, cache: 'no-store' });
    if (res.status === 401) {
      stopped = true;
      const body = await res.json().catch(() => null);
      reportUnauthorized(body?.error?.msg || 'the API key was refused');
      return;
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    onStatus('live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let msg = { id: null, event: 'message', data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (msg.data.length) dispatch(msg);
          msg = { id: null, event: 'message', data: [] };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'id') msg.id = v;
        else if (field === 'event') msg.event = v;
        else if (field === 'data') msg.data.push(v);
      }
    }
  }

  function dispatch(msg) {
    let data;
    try {
      data = JSON.parse(msg.data.join('\n'));
    } catch {
      return;
    }
    if (msg.event === 'lagged') {
      onLagged(data);
      return;
    }
    const id = Number(msg.id ?? data.id);
    if (cursor !== null && id <= cursor) return; // never twice
    cursor = id;
    onEvent(data);
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
        if (stopped) break;
        onStatus('reconnecting', 'the stream ended');
      } catch (e) {
        if (stopped) break;
        onStatus('reconnecting', e.message);
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  })();

  return {
    close() {
      stopped = true;
      ctl?.abort();
    },
    cursor: () => cursor,
  };
}
