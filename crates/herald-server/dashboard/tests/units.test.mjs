// The dashboard's pure helpers, in node (no browser): time parsing as the CLI takes it, spans
// and times as the CLI prints them, event descriptions, and a recipient's trace timeline.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { describe, parseWhen, span, steps, utc } from '../pages.js';

const NOW = Date.UTC(2025, 5, 1, 12, 0, 0);

test('times are taken as the CLI takes them', () => {
  assert.equal(parseWhen('', NOW), null);
  assert.equal(parseWhen('now', NOW), NOW);
  assert.equal(parseWhen('1732250000123', NOW), 1732250000123);
  assert.equal(parseWhen('15m', NOW), NOW - 15 * 60000);
  assert.equal(parseWhen('1h30m', NOW), NOW - 90 * 60000);
  assert.equal(parseWhen('500ms', NOW), NOW - 500);
  assert.equal(parseWhen('2d', NOW), NOW - 2 * 86400000);
  assert.equal(parseWhen('1w', NOW), NOW - 7 * 86400000);
  assert.equal(parseWhen('2025-06-01T12:00:00Z', NOW), NOW);
  assert.equal(parseWhen('2025-06-01', NOW), Date.UTC(2025, 5, 1));
  assert.equal(parseWhen('2025-06-01 12:00:00.045 UTC', NOW), NOW + 45);
  assert.equal(parseWhen('2025-06-01 11:59', NOW), NOW - 60000);
  for (const bad of ['yesterday', '15x', '1h30', '2025-02-30', '2025-06-01 25:00', '-5m', '2025-6-1']) {
    assert.throws(() => parseWhen(bad, NOW), /is not a time/, bad);
  }
});

test('spans and times print as the CLI prints them', () => {
  assert.equal(span(850), '850 ms');
  assert.equal(span(2500), '2.5 s');
  assert.equal(span(2000), '2 s');
  assert.equal(span(185000), '3m 05s');
  assert.equal(span(7620000), '2h 07m');
  assert.equal(span(273600000), '3d 04h');
  assert.equal(utc(NOW + 45), '2025-06-01 12:00:00.045 UTC');
  assert.equal(utc(null), '-');
});

test('events are described in words', () => {
  const ev = { kind: 'eviction', session: 's_1', data: { reason: 'replaced', addr: '10.0.0.1:5', by: { conn: 'c_2', addr: '10.0.0.2:6' } } };
  assert.equal(describe(ev), 'evicted (replaced), replaced by connection c_2 (10.0.0.2:6); it was connected from 10.0.0.1:5');
  const kicked = { kind: 'eviction', data: { reason: 'kicked', addr: '', by: { conn: null, addr: 'api:127.0.0.1:9' } } };
  assert.equal(describe(kicked), 'evicted (kicked), by api:127.0.0.1:9; it had no connection');
  assert.equal(describe({ kind: 'gap', data: { s: 'chan:room', from: 1, to: 3, reason: 'retention' } }), 'gap on chan:room: offsets 1–3 removed by retention before delivery');
  assert.equal(describe({ kind: 'resume_failed', data: { reason: 'expired', addr: 'a' } }), 'resume failed: expired from a');
  assert.equal(describe({ kind: 'identity_rejected', session: 's_9', data: { addr: 'a' } }), 'login refused: uid in use (held by session s_9), from a');
});

test('a recipient timeline has the steps of herald trace', () => {
  const m = { id: 'm_1', s: 'inbox:bob', o: 4, ts: NOW };
  const acked = { uid: 'bob', device: 'b1', session: 's_1', state: 'acked', sent_ms: NOW + 5, last_sent_ms: NOW + 5, attempts: 1, acked_ms: NOW + 82 };
  assert.deepEqual(steps(m, acked, false).map(([w, what]) => `${w}  ${what}`), [
    '2025-06-01 12:00:00.000 UTC  accepted (durable)',
    '2025-06-01 12:00:00.005 UTC  sent to session s_1 (attempt 1), 5 ms after it was accepted',
    '2025-06-01 12:00:00.082 UTC  acknowledged, 82 ms after it was accepted',
  ]);
  const redelivered = { uid: 'bob', device: 'b2', session: 's_2', state: 'sent', sent_ms: NOW + 6, last_sent_ms: NOW + 2006, attempts: 3, acked_ms: null, cause: 'offline', reason: 'device offline since X' };
  assert.deepEqual(steps(m, redelivered, false).map(([w, what]) => `${w}  ${what}`), [
    '2025-06-01 12:00:00.000 UTC  accepted (durable)',
    '2025-06-01 12:00:00.006 UTC  sent (first attempt), 6 ms after it was accepted',
    '2025-06-01 12:00:02.006 UTC  redelivered 2 times (3 attempts in all), the last to session s_2',
    'not acknowledged  device offline since X',
  ]);
  const skipped = { state: 'skipped', reason: 'started after it', sent_ms: null };
  assert.deepEqual(steps(m, skipped, false).map(([w]) => w), ['2025-06-01 12:00:00.000 UTC', 'not applicable']);
  const chan = { state: 'acked', sent_ms: null, acked_ms: null, session: 's_3' };
  assert.deepEqual(steps({ ...m, s: 'chan:room' }, chan, true).map(([, what]) => what), [
    'accepted (durable)',
    'sent to the session (channel deliveries record no time)',
    'acknowledged (channel positions record no time)',
  ]);
});
