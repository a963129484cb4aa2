// genseek's HTTP API from the page: the key (sessionStorage only), one-line errors.

const KEY = 'genseek.apiKey';
const BASE = new URL('..', document.baseURI); // the console lives at /ui/, the API at /

export class ApiError extends Error {
  constructor(status, type, message, body) {
    super(message);
    this.status = status;
    this.type = type;
    this.body = body;
  }
}

export function getKey() {
  try { return sessionStorage.getItem(KEY) || ''; } catch { return ''; }
}

export function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  } catch { /* storage disabled: the key lasts until the page reloads */ }
}

export function path(...parts) {
  return parts.map((p, i) => (i === 0 ? p : encodeURIComponent(p))).join('/');
}

// fetch JSON; `ok` lists statuses beyond 2xx whose body is an answer (e.g. 503 from /ready)
export async function api(method, route, body, { ok = [], signal, text = false } = {}) {
  const headers = { Accept: text ? 'text/plain' : 'application/json' };
  const key = getKey();
  if (key) headers['X-API-Key'] = key;
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(new URL(route.replace(/^\//, ''), BASE), init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `cannot reach the genseek server (${e.message}); is it running?`);
  }
  const raw = await resp.text();
  let data = raw;
  if (!text) {
    try { data = raw ? JSON.parse(raw) : null; } catch { data = null; }
  }
  if (!resp.ok && !ok.includes(resp.status)) {
    const err = data && data.error ? data.error : {};
    const message = err.message || `${resp.status} ${resp.statusText || 'error'}`.trim();
    throw new ApiError(resp.status, err.type || 'http', `${resp.status}: ${message}`, data);
  }
  return data;
}

// Run `fn` over `items` with at most `limit` at a time.
export async function pool(items, limit, fn) {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await fn(queue.shift());
  });
  await Promise.all(workers);
}
