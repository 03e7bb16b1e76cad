// The HTTP API with the operator's key. The key lives in this tab's sessionStorage only; a 401
// forgets it and sends the operator back to the login form.

const KEY = 'herald.apiKey';

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, code, msg) {
    super(msg);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || '';
}

export function setApiKey(k) {
  if (k) sessionStorage.setItem(KEY, k);
  else sessionStorage.removeItem(KEY);
}

export function authHeaders(extra = {}) {
  const k = apiKey();
  return k ? { ...extra, Authorization: `Bearer ${k}` } : { ...extra };
}

let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}
/// Tells the page that the key was refused (from any request, the event feed's too).
export function reportUnauthorized(msg) {
  onUnauthorized(msg);
}

/// Calls the API: path like "/v1/overview", query as an object (empty values left out).
export async function api(path, { method = 'GET', query = {}, signal } = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') qs.set(k, String(v));
  }
  const url = qs.toString() ? `${path}?${qs}` : path;
  let res;
  try {
    res = await fetch(url, { method, headers: authHeaders(), signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', `the server did not answer (${e.message})`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (res.status === 401) {
    onUnauthorized(body?.error?.msg || 'the API key was refused');
    throw new Unauthorized(body?.error?.msg || 'unauthorized');
  }
  if (!res.ok) {
    const err = body?.error || {};
    throw new ApiError(res.status, err.code || 'error', err.msg || `HTTP ${res.status}`);
  }
  return body;
}

/// Checks a key (or none, for a dev-mode server) against the API: true if it is accepted.
export async function tryKey(k) {
  const headers = k ? { Authorization: `Bearer ${k}` } : {};
  const res = await fetch('/v1/overview', { headers, cache: 'no-store' });
  if (res.status === 401) return { ok: false, msg: (await res.json().catch(() => null))?.error?.msg };
  if (!res.ok) return { ok: false, msg: `the server answered HTTP ${res.status}` };
  return { ok: true };
}
