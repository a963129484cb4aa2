// The console's shell: state in the query string (pushState/popstate), the collection picker,
// the error area and the API key form; each view lives in its own module.

import { api, ApiError, getKey, path, setKey } from './api.js';
import { $, clear, el } from './dom.js';
import * as searchView from './search.js';
import * as docView from './doc.js';
import * as collectionView from './collection.js';
import * as evalView from './eval.js';

const VIEWS = { search: searchView, doc: docView, collection: collectionView, eval: evalView };
const PARAMS = ['collection', 'q', 'pipeline', 'view', 'doc', 'dataset', 'split'];

export const state = {};
let collections = null;
const infoCache = new Map();

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of PARAMS) state[name] = params.get(name) || '';
  if (!VIEWS[state.view]) state.view = state.doc ? 'doc' : 'search';
}

export function urlFor(patch) {
  const next = { ...state, ...patch };
  const params = new URLSearchParams();
  for (const name of PARAMS) {
    if (name === 'view' && next.view === 'search') continue;
    if (name === 'doc' && next.view !== 'doc') continue;
    if (next[name]) params.set(name, next[name]);
  }
  const query = params.toString();
  return query ? `./?${query}` : './';
}

// Change the state, record it in the URL (a new history entry unless `replace`) and render.
export function navigate(patch, { replace = false, render = true } = {}) {
  const url = urlFor(patch);
  Object.assign(state, patch);
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  if (render) show();
}

// -- errors and the key -----------------------------------------------------------------

export function showError(err) {
  if (err && err.name === 'AbortError') return;
  const box = $('error');
  let message = err instanceof Error ? err.message : String(err);
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
    const had = getKey();
    message = err.status === 401
      ? `${had ? 'The API key was not accepted' : 'This server needs an API key'} (${err.message}). Enter a key below.`
      : `The API key lacks the scope for this (${err.message}). Enter another key below.`;
    $('keyform').hidden = false;
    $('apikey').focus();
  }
  box.textContent = message;
  box.hidden = false;
  document.body.dataset.error = '1';
}

export function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  delete document.body.dataset.error;
}

// Keep `fn`'s errors in the error area: the page never goes blank.
export async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    showError(err);
    return undefined;
  }
}

// -- collections ------------------------------------------------------------------------

export async function collectionInfo(name, { fresh = false } = {}) {
  if (!name) throw new Error('pick a collection first');
  if (fresh || !infoCache.has(name)) {
    const p = api('GET', path('/collections', name));
    infoCache.set(name, p);
    p.catch(() => infoCache.delete(name));
  }
  return infoCache.get(name);
}

async function loadCollections() {
  const select = $('collection');
  try {
    const body = await api('GET', '/collections');
    collections = body.collections;
  } catch (err) {
    clear(select).append(el('option', { value: '', text: '(not available)' }));
    throw err;
  }
  fillPicker();
}

function fillPicker() {
  const select = clear($('collection'));
  if (!collections) return;
  if (!collections.length) select.append(el('option', { value: '', text: '(no collections)' }));
  const names = [...collections];
  if (state.collection && !names.includes(state.collection)) names.unshift(state.collection);
  for (const name of names) select.append(el('option', { value: name, text: name }));
  select.value = state.collection;
}

// -- rendering --------------------------------------------------------------------------

let current = null;

export async function show() {
  if (current && current !== VIEWS[state.view] && current.hide) current.hide();
  current = VIEWS[state.view];
  for (const name of Object.keys(VIEWS)) $(`view-${name}`).hidden = name !== state.view;
  for (const link of document.querySelectorAll('nav a')) {
    const view = link.dataset.view;
    const active = view === state.view || (view === 'search' && state.view === 'doc');
    link.href = urlFor({ view });
    if (active) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  $('forget-key').hidden = !getKey();
  if (collections === null) {
    // the collection's stats load beside the list (a deep link needs both before its search)
    if (state.collection) collectionInfo(state.collection).catch(() => {});
    const ok = await guarded(loadCollections);
    if (ok === undefined && collections === null) return;
  }
  if (!state.collection && collections.length) {
    navigate({ collection: collections[0] }, { replace: true, render: false });
  }
  fillPicker();
  if (!state.collection) {
    showError(new Error('This server has no collections yet: create one with genseek index or POST /collections.'));
    return;
  }
  if (!collections.includes(state.collection)) {
    showError(new Error(`No collection named '${state.collection}' on this server (collections: ${collections.join(', ') || 'none'}).`));
    return;
  }
  await guarded(() => current.show(state));
}

function start() {
  readUrl();
  document.addEventListener('click', (event) => {
    const a = event.target.closest('a[href^="./"]');
    if (!a || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    const url = new URL(a.href);
    const patch = {};
    for (const name of PARAMS) patch[name] = url.searchParams.get(name) || '';
    if (!patch.view) patch.view = 'search';
    clearError();
    navigate(patch);
  });
  window.addEventListener('popstate', () => { clearError(); readUrl(); show(); });
  $('collection').addEventListener('change', (event) => {
    clearError();
    const view = state.view === 'doc' ? 'search' : state.view;
    navigate({ collection: event.target.value, pipeline: '', view, doc: '' });
  });
  $('keyform').addEventListener('submit', (event) => {
    event.preventDefault();
    setKey($('apikey').value.trim());
    $('apikey').value = '';
    $('keyform').hidden = true;
    clearError();
    collections = null;
    infoCache.clear();
    show();
  });
  $('forget-key').addEventListener('click', () => {
    setKey('');
    collections = null;
    infoCache.clear();
    show();
  });
  window.addEventListener('error', (event) => showError(new Error(`console error: ${event.message}`)));
  window.addEventListener('unhandledrejection', (event) => showError(event.reason));
  show();
}

start();
