// Search view: query box, pipeline editor, the stages' lists side by side with the fusion.

import { api, path, pool } from './api.js';
import { $, clear, el, highlighted, ms, num, parseJson, queryTerms, snippet } from './dom.js';
import { clearError, collectionInfo, navigate, showError, state, urlFor } from './app.js';

const docCache = new Map(); // "collection\0id" -> document (or a promise of one)
let lastSearch = null; // {key, response, pipeline}
let defaultText = '';
let debounce = null;
let generation = 0;
let controller = null;
let wired = false;

export function defaultPipeline(info, k = 10) {
  const indexes = Object.entries(info.indexes || {})
    .filter(([, index]) => index.state !== 'failed').map(([name]) => name);
  return {
    retrieve: indexes.map((index) => ({ index, k: Math.max(100, k) })),
    fusion: { method: 'rrf', k: 60 },
    k,
    fields: ['title', 'text'],
  };
}

export const pretty = (value) => JSON.stringify(value, null, 2);

// The pipeline in the editor as an object; a parse error names the line and column.
export function readPipeline(textarea, what = 'pipeline') {
  let value;
  try {
    value = parseJson(textarea.value, what);
  } catch (err) {
    textarea.setAttribute('aria-invalid', 'true');
    const lines = textarea.value.split('\n');
    const offset = lines.slice(0, err.line - 1).reduce((n, l) => n + l.length + 1, 0) + err.column - 1;
    textarea.setSelectionRange(offset, offset);
    throw err;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    textarea.setAttribute('aria-invalid', 'true');
    throw new Error(`${what}: expected a JSON object like {"retrieve": [{"index": "bm25"}]}`);
  }
  textarea.removeAttribute('aria-invalid');
  return value;
}

const searchKey = (collection, q, pipeline) => `${collection}\u0000${q}\u0000${JSON.stringify(pipeline)}`;

// POST search with explain; `reuse` answers the last request again from memory.
export async function explainSearch(collection, query, pipeline, { signal, reuse = false } = {}) {
  const key = searchKey(collection, query, pipeline);
  if (reuse && lastSearch && lastSearch.key === key) return lastSearch.response;
  const response = await api('POST', path('/collections', collection, 'search'),
    { query, pipeline, explain: true }, { signal });
  lastSearch = { key, response, pipeline };
  return response;
}

// One column per retrieval stage, then the fused (or reranked) list.
export function columnsOf(response, pipeline) {
  const columns = (response.stages || []).map((stage) => listColumn(stage.index, stage.hits, stage.took_ms));
  const t = response.timings || {};
  const fusion = (pipeline.fusion && pipeline.fusion.method) || 'rrf';
  const rerank = pipeline.rerank ? pipeline.rerank.reranker : null;
  const name = rerank ? `${fusion} → ${rerank}` : (columns.length > 1 ? `fused (${fusion})` : 'results');
  columns.push({ ...listColumn(name, response.results, rerank ? t.rerank_ms : t.fusion_ms), final: true });
  return columns;
}

// A named ranked list with each document's rank (1-based).
export function listColumn(name, hits, took) {
  const list = hits || [];
  return { name, hits: list, took, ranks: new Map(list.map((h, i) => [h.doc_id, i + 1])) };
}

function cachedDoc(collection, id) {
  return docCache.get(`${collection}\u0000${id}`);
}

function fetchDoc(collection, id) {
  const key = `${collection}\u0000${id}`;
  if (!docCache.has(key)) {
    const p = api('GET', path('/collections', collection, 'documents', id));
    docCache.set(key, p);
    p.then((doc) => docCache.set(key, doc), () => docCache.delete(key));
  }
  return docCache.get(key);
}

function fillHit(node, doc, terms) {
  const title = node.querySelector('.title');
  title.textContent = doc.title || doc.doc_id || doc.id;
  const text = node.querySelector('.snippet');
  clear(text).append(...highlighted(snippet(doc.text || '', terms), terms));
}

// A result list: rank, title (a link to the document view), id, score, snippet, other ranks.
export function hitList(column, { others = [], limit = 10, terms = [], relevant = null, docUrl }) {
  const list = el('ol', { class: 'hits' });
  for (const [i, hit] of column.hits.slice(0, limit).entries()) {
    const rel = relevant ? relevant[hit.doc_id] : undefined;
    const ranks = others.map((other) => {
      const r = other.ranks.get(hit.doc_id);
      return el('span', { class: r ? 'other' : 'other absent', title: r ? `rank ${r} in ${other.name}` : `not in ${other.name}'s ${other.hits.length}` },
        `${other.name} ${r ? `#${r}` : '—'}`);
    });
    const node = el('li', { class: rel > 0 ? 'hit relevant' : 'hit', dataset: { doc: hit.doc_id } },
      el('div', { class: 'hit-head' },
        el('span', { class: 'rank', text: String(i + 1) }),
        el('a', { class: 'title', href: docUrl(hit.doc_id), text: hit.title || hit.doc_id }),
        el('span', { class: 'score', title: 'score', text: num(hit.score) })),
      el('div', { class: 'hit-id' }, el('code', { text: hit.doc_id }),
        rel !== undefined ? el('span', { class: rel > 0 ? 'rel' : 'rel zero', text: rel > 0 ? `relevant (${rel})` : 'judged 0' }) : null),
      el('p', { class: 'snippet' }),
      ranks.length ? el('div', { class: 'others' }, ranks) : null);
    if (hit.text !== undefined || hit.title !== undefined) fillHit(node, hit, terms);
    list.append(node);
  }
  return list;
}

// Fill title and snippet of hits that came without fields (stage hits), 6 fetches at a time.
export async function fillMissing(container, collection, terms) {
  const nodes = [...container.querySelectorAll('.hit')].filter((n) => !n.querySelector('.snippet').firstChild);
  const byId = new Map();
  for (const node of nodes) {
    const id = node.dataset.doc;
    const doc = cachedDoc(collection, id);
    if (doc && !(doc instanceof Promise)) fillHit(node, doc, terms);
    else byId.set(id, [...(byId.get(id) || []), node]);
  }
  await pool([...byId.keys()], 6, async (id) => {
    try {
      const doc = await fetchDoc(collection, id);
      for (const node of byId.get(id)) fillHit(node, doc, terms);
    } catch (err) {
      for (const node of byId.get(id)) node.querySelector('.snippet').textContent = `(${err.message})`;
    }
  });
}

function linkSameDocs(container) {
  const mark = (event, on) => {
    const hit = event.target.closest('.hit');
    if (!hit) return;
    for (const node of container.querySelectorAll('.hit')) {
      node.classList.toggle('same', on && node.dataset.doc === hit.dataset.doc);
    }
  };
  container.addEventListener('mouseover', (e) => mark(e, true));
  container.addEventListener('focusin', (e) => mark(e, true));
  container.addEventListener('mouseleave', (e) => mark(e, false));
}

function renderColumns(columns, response, pipeline, query, started) {
  const box = clear($('columns'));
  const terms = queryTerms(query);
  const limit = pipeline.k || 10;
  box.classList.toggle('single', columns.length === 1);
  for (const column of columns) {
    const others = columns.filter((c) => c !== column);
    const head = el('h3', {}, el('span', { class: 'colname', text: column.name }),
      el('span', { class: 'took', text: `${ms(column.took)} · ${column.hits.length} hits` }));
    const section = el('section', { class: column.final ? 'column final' : 'column', 'aria-label': column.name },
      head, column.hits.length ? hitList(column, { others, limit, terms, docUrl: (id) => urlFor({ view: 'doc', doc: id }) })
        : el('p', { class: 'empty', text: 'no hits' }));
    box.append(section);
  }
  const t = response.timings || {};
  const parts = [`API ${ms(response.took_ms)}`];
  if (response.timings) {
    parts.push(`retrieve ${ms(t.retrieve_ms)}`, `fusion ${ms(t.fusion_ms)}`);
    if (t.rerank_ms !== null && t.rerank_ms !== undefined) parts.push(`rerank ${ms(t.rerank_ms)}`);
    parts.push(`fetch ${ms(t.fetch_ms)}`);
  }
  parts.push(`page ${ms(performance.now() - started)}`);
  const status = $('search-status');
  status.textContent = `${(response.results || []).length} results for “${query}” — ${parts.join(' · ')}`;
  for (const warning of response.warnings || []) status.append(el('span', { class: 'warning', text: ` ⚠ ${warning}` }));
  if (!response.stages) status.append(el('span', { class: 'warning', text: ' (this server sends no per-stage lists)' }));
  box.dataset.query = query;
  if (window.__genseekFirstResults === undefined) window.__genseekFirstResults = performance.now();
  window.__genseekLastResults = { at: performance.now(), took_ms: response.took_ms, query };
  linkSameDocs(box);
  return terms;
}

function pipelineParam(text) {
  try {
    const compact = JSON.stringify(JSON.parse(text));
    return compact === JSON.stringify(JSON.parse(defaultText)) ? '' : compact;
  } catch {
    return state.pipeline;
  }
}

async function runSearch() {
  const query = $('q').value.trim();
  const collection = state.collection;
  const mine = ++generation;
  if (controller) controller.abort();
  if (!query) {
    clear($('columns'));
    $('search-status').textContent = 'Type a query.';
    return;
  }
  const pipeline = readPipeline($('pipeline'));
  controller = new AbortController();
  const started = performance.now();
  $('search-status').textContent = `searching “${query}” …`;
  const response = await explainSearch(collection, query, pipeline, { signal: controller.signal });
  if (mine !== generation) return;
  clearError();
  const columns = columnsOf(response, pipeline);
  const terms = renderColumns(columns, response, pipeline, query, started);
  await fillMissing($('columns'), collection, terms);
}

function search({ replace }) {
  const q = $('q').value.trim();
  const pipeline = pipelineParam($('pipeline').value);
  if (q !== state.q || pipeline !== state.pipeline) navigate({ q, pipeline }, { replace, render: false });
  return runSearch().catch(showError);
}

function editPipeline(change) {
  const textarea = $('pipeline');
  try {
    const value = readPipeline(textarea);
    change(value);
    textarea.value = pretty(value);
  } catch (err) {
    showError(err);
  }
}

function wire() {
  wired = true;
  $('searchform').addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(debounce);
    search({ replace: false });
  });
  $('q').addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => search({ replace: true }), 250);
  });
  $('run').addEventListener('click', () => { clearTimeout(debounce); search({ replace: false }); });
  $('reset-pipeline').addEventListener('click', () => {
    $('pipeline').value = defaultText;
    $('pipeline').removeAttribute('aria-invalid');
  });
  $('k').addEventListener('change', () => editPipeline((p) => { p.k = Number($('k').value) || 10; }));
  $('add-rerank').addEventListener('click', () => editPipeline((p) => {
    const reranker = $('reranker').value.trim();
    if (!reranker) throw new Error('name a reranker (the server lists its rerankers in an unknown name’s error)');
    p.rerank = { reranker, depth: Number($('rerank-depth').value) || 20 };
  }));
}

export async function show(s) {
  if (!wired) wire();
  const info = await collectionInfo(s.collection);
  const k = Number($('k').value) || 10;
  defaultText = pretty(defaultPipeline(info, k));
  const textarea = $('pipeline');
  if (s.pipeline) {
    try { textarea.value = pretty(JSON.parse(s.pipeline)); } catch { textarea.value = s.pipeline; }
    $('editor').open = true;
    try { $('k').value = JSON.parse(s.pipeline).k || 10; } catch { /* shown on search */ }
  } else {
    textarea.value = defaultText;
  }
  if ($('q').value !== s.q) $('q').value = s.q;
  if (s.q) await runSearch();
  else {
    clear($('columns'));
    $('search-status').textContent = `Type a query to search ${s.collection} (${Object.keys(info.indexes || {}).join(', ')}).`;
  }
  if (document.activeElement === document.body) $('q').focus();
}

export function hide() {
  clearTimeout(debounce);
  if (controller) controller.abort();
}
