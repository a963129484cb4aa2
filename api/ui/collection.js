// Collection view: documents, sequence numbers, per-index state, lag, disk and memory, health;
// polled every 1.5 s while the view is visible (so a bulk load can be watched).

import { api, path } from './api.js';
import { $, bytes, clear, el } from './dom.js';
import { clearError, collectionInfo, showError, state } from './app.js';

const PERIOD_MS = 1500;
let timer = null;
let active = false;
let visibilityWired = false;

function metricValue(text, name) {
  const line = (text || '').split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : null;
}

async function refresh() {
  const name = state.collection;
  const [stats, health, metrics] = await Promise.all([
    collectionInfo(name, { fresh: true }),
    api('GET', path('/collections', name, 'ready'), undefined, { ok: [503] }),
    api('GET', '/metrics', undefined, { text: true }).catch(() => null),
  ]);
  if (!active || state.collection !== name) return;
  clearError();
  $('coll-title').textContent = `Collection ${name}`;
  const badge = $('coll-health');
  badge.textContent = health.state === 'ready' ? 'healthy: every index current'
    : `${health.state}${health.lag ? ` (${health.lag} behind)` : ''}`;
  badge.className = `badge ${health.state}`;
  $('coll-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  const rss = metricValue(metrics, 'process_resident_memory_bytes');
  const facts = clear($('coll-facts'));
  for (const [label, value] of [
    ['documents', stats.documents], ['seq', stats.seq], ['applied seq', stats.applied_seq],
    ['lag', stats.lag], ['state', stats.state], ['disk', bytes(stats.disk_bytes)],
    ['store', bytes(stats.store_bytes)], ['server memory (RSS)', rss === null ? '—' : bytes(rss)],
    ['sync error', stats.sync_error || 'none'],
  ]) facts.append(el('div', {}, el('dt', { text: label }), el('dd', { text: String(value ?? '—') })));
  const tbody = clear($('coll-indexes').tBodies[0]);
  for (const [index, info] of Object.entries(stats.indexes || {})) {
    const h = (health.indexes || {})[index] || {};
    const st = info.state || h.state || '—';
    tbody.append(el('tr', { class: `state-${st}` },
      el('th', { scope: 'row', text: index }),
      el('td', {}, el('code', { text: info.spec || info.type || '' })),
      el('td', {}, el('span', { class: `badge ${st}`, text: st })),
      el('td', { text: String(info.documents ?? '—') }),
      el('td', { text: String(info.applied_seq ?? '—') }),
      el('td', { text: String(info.lag ?? h.lag ?? '—') }),
      el('td', { text: bytes(info.disk_bytes) }),
      el('td', { text: bytes(info.memory_bytes) }),
      el('td', { class: 'errcell', text: info.error || h.error || '' })));
  }
  $('view-collection').dataset.polls = String(Number($('view-collection').dataset.polls || 0) + 1);
}

function schedule() {
  clearTimeout(timer);
  if (!active || document.visibilityState !== 'visible') return;
  timer = setTimeout(async () => {
    try { await refresh(); } catch (err) { showError(err); }
    schedule();
  }, PERIOD_MS);
}

export async function show() {
  active = true;
  if (!visibilityWired) {
    visibilityWired = true;
    document.addEventListener('visibilitychange', schedule);
  }
  clearTimeout(timer);
  try {
    await refresh();
  } finally {
    schedule();
  }
}

export function hide() {
  active = false;
  clearTimeout(timer);
}
