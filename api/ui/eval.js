// Evaluation view: judged queries (a server dataset or uploaded qrels) through two pipelines,
// the measures, wins/ties/losses and p-values, a per-query difference chart, and a query's two
// result lists side by side with the relevant documents marked.

import { api, path } from './api.js';
import { $, clear, el, ms, num, parseJson, queryTerms, svg } from './dom.js';
import { clearError, collectionInfo, navigate, showError, state, urlFor } from './app.js';
import { defaultPipeline, fillMissing, hitList, listColumn, pretty, readPipeline } from './search.js';

let wired = false;
let datasets = null;
let result = null; // {response, pipelines}
let filledFor = null;

async function loadDatasets() {
  const select = $('dataset');
  try {
    const body = await api('GET', '/datasets');
    datasets = body.datasets || [];
  } catch (err) {
    datasets = [];
    $('eval-status').textContent = `No server datasets (${err.message}); upload qrels instead.`;
  }
  clear(select).append(el('option', { value: '', text: '(none: upload qrels below)' }));
  for (const d of datasets) {
    select.append(el('option', { value: d.name, text: `${d.name} (${d.queries} queries)` }));
  }
}

function fillSplits() {
  const dataset = (datasets || []).find((d) => d.name === $('dataset').value);
  const select = clear($('split'));
  for (const split of dataset ? dataset.splits : ['test']) select.append(el('option', { value: split, text: split }));
  if (state.split && [...select.options].some((o) => o.value === state.split)) select.value = state.split;
  else if ([...select.options].some((o) => o.value === 'test')) select.value = 'test';
}

const readFile = (input) => (input.files && input.files[0] ? input.files[0].text() : Promise.resolve(null));

// queries.jsonl ({"_id", "text"} per line) or "qid<TAB>text" lines
export function parseQueries(text) {
  const queries = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith('{')) {
      const row = parseJson(line, `queries file line ${i + 1}`);
      const id = row._id ?? row.id ?? row.qid;
      if (id === undefined || typeof row.text !== 'string') throw new Error(`queries file line ${i + 1}: expected {"_id": ..., "text": ...}`);
      queries[String(id)] = row.text;
    } else {
      const tab = line.indexOf('\t');
      if (tab < 1) throw new Error(`queries file line ${i + 1}: expected "qid<TAB>text" or a JSON object`);
      queries[line.slice(0, tab)] = line.slice(tab + 1);
    }
  }
  return queries;
}

async function run() {
  const pipelines = { A: readPipeline($('pipe-a'), 'pipeline A'), B: readPipeline($('pipe-b'), 'pipeline B') };
  const body = { pipelines, split: $('split').value || 'test' };
  const dataset = $('dataset').value;
  if (dataset) body.dataset = dataset;
  const [qrelsText, queriesText] = await Promise.all([readFile($('qrels-file')), readFile($('queries-file'))]);
  if (qrelsText !== null) body.qrels_tsv = qrelsText;
  if (queriesText !== null) body.queries = parseQueries(queriesText);
  if (!dataset && qrelsText === null) throw new Error('pick a dataset or upload a qrels file');
  if (!dataset && !body.queries) throw new Error('uploaded qrels need their queries: upload a queries file too (or pick a dataset)');
  const max = Number($('max-queries').value);
  if (max > 0) body.max_queries = max;
  if (dataset !== state.dataset || body.split !== state.split) {
    navigate({ dataset, split: body.split }, { replace: true, render: false });
  }
  $('eval-status').textContent = 'evaluating …';
  $('eval-run').disabled = true;
  try {
    const response = await api('POST', path('/collections', state.collection, 'evaluate'), body);
    clearError();
    result = { response, pipelines };
    render();
  } finally {
    $('eval-run').disabled = false;
  }
}

const signed = (x) => (x > 0 ? `+${num(x)}` : num(x));

function render() {
  const { response } = result;
  const names = Object.keys(response.systems);
  const measures = response.measures;
  const table = clear($('eval-table'));
  table.hidden = false;
  table.append(el('caption', { text: `${Object.keys(response.queries).length} judged queries, ${ms(response.took_ms)}` }),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'system' }),
      measures.map((m) => el('th', { scope: 'col', text: m })))));
  const tbody = el('tbody');
  for (const name of names) {
    tbody.append(el('tr', {}, el('th', { scope: 'row', text: name }),
      measures.map((m) => el('td', { text: num(response.systems[name][m]) }))));
  }
  const { baseline, against } = response.comparison;
  for (const [name, values] of Object.entries(against)) {
    tbody.append(el('tr', { class: 'diff' }, el('th', { scope: 'row', text: `${name} − ${baseline}` }),
      measures.map((m) => {
        const v = values[m];
        return el('td', {}, el('span', { class: v.mean_difference > 0 ? 'up' : v.mean_difference < 0 ? 'down' : '', text: signed(v.mean_difference) }),
          el('span', { class: 'wtl', text: ` wins/ties/losses ${v.wins}/${v.ties}/${v.losses}` }),
          el('span', { class: v.p_value < 0.05 ? 'p sig' : 'p', text: ` p = ${num(v.p_value, 3)}` }));
      })));
  }
  table.append(tbody);
  const select = clear($('eval-measure'));
  for (const m of measures) select.append(el('option', { value: m, text: m }));
  $('eval-chart-box').hidden = false;
  $('eval-status').textContent = '';
  chart();
}

function chart() {
  const { response } = result;
  const [a, b] = Object.keys(response.systems);
  const measure = $('eval-measure').value;
  const rows = Object.keys(response.per_query[a] || {}).map((qid) => ({
    qid, diff: ((response.per_query[b] || {})[qid]?.[measure] ?? 0) - (response.per_query[a][qid][measure] ?? 0),
  })).sort((x, y) => y.diff - x.diff || x.qid.localeCompare(y.qid));
  const box = clear($('eval-chart'));
  const W = 900; const H = 220; const pad = 24; const left = 56;
  const top = Math.max(1e-9, ...rows.map((r) => Math.abs(r.diff)));
  const step = rows.length ? (W - left - pad) / rows.length : 0;
  const mid = H / 2;
  const scale = (H / 2 - pad) / top;
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'group', 'aria-label': `${measure}: ${b} − ${a} per query, sorted` });
  root.append(svg('line', { x1: left, x2: W - pad, y1: mid, y2: mid, class: 'axis' }),
    svg('text', { x: left - 6, y: pad + 4, class: 'tick' }, `+${num(top, 3)}`),
    svg('text', { x: left - 6, y: mid + 4, class: 'tick' }, '0'),
    svg('text', { x: left - 6, y: H - pad + 4, class: 'tick' }, `−${num(top, 3)}`));
  for (const [i, row] of rows.entries()) {
    const h = Math.max(1.5, Math.abs(row.diff) * scale);
    const cls = row.diff > 0 ? 'bar win' : row.diff < 0 ? 'bar loss' : 'bar tie';
    const label = `query ${row.qid}: ${signed(row.diff)} (${response.queries[row.qid] || ''})`;
    const bar = svg('g', {
      class: cls, tabindex: 0, role: 'button', 'aria-label': label, 'data-qid': row.qid,
      onclick: () => compare(row.qid).catch(showError),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); compare(row.qid).catch(showError); } },
    }, svg('title', {}, label),
    svg('rect', { x: left + i * step, y: 0, width: Math.max(step, 1), height: H, class: 'hitbox' }),
    svg('rect', { x: left + i * step + step * 0.1, y: row.diff >= 0 ? mid - h : mid, width: Math.max(step * 0.8, 0.8), height: h }));
    root.append(bar);
  }
  box.append(root);
}

async function compare(qid) {
  const { response, pipelines } = result;
  const query = response.queries[qid];
  const relevant = response.qrels[qid] || {};
  const out = clear($('eval-compare'));
  out.append(el('h3', { text: `Query ${qid}: ${query}` }), el('p', { class: 'status', text: 'searching …' }));
  const names = Object.keys(pipelines);
  const lists = await Promise.all(names.map(async (name) => {
    const p = { ...pipelines[name], fields: ['title', 'text'] };
    const body = await api('POST', path('/collections', state.collection, 'search'), { query, pipeline: p });
    return listColumn(name, body.results);
  }));
  const judged = Object.entries(relevant).filter(([, g]) => g > 0).map(([d]) => d);
  const terms = queryTerms(query);
  const grid = el('div', { class: 'columns' });
  for (const column of lists) {
    const others = lists.filter((c) => c !== column);
    const found = judged.filter((d) => column.ranks.has(d)).length;
    const m = result.response.measures.map((name) => `${name} ${num(response.per_query[column.name]?.[qid]?.[name])}`).join(' · ');
    grid.append(el('section', { class: 'column', 'aria-label': `pipeline ${column.name}` },
      el('h3', {}, el('span', { class: 'colname', text: `pipeline ${column.name}` }),
        el('span', { class: 'took', text: `${found}/${judged.length} relevant found · ${m}` })),
      column.hits.length ? hitList(column, { others, limit: column.hits.length, terms, relevant, docUrl: (id) => urlFor({ view: 'doc', doc: id, q: query, pipeline: JSON.stringify(pipelines[column.name]) }) })
        : el('p', { class: 'empty', text: 'no hits' })));
  }
  clear(out).append(el('h3', { text: `Query ${qid}: ${query}` }),
    el('p', { class: 'hint', text: `${judged.length} relevant documents judged; relevant hits are marked.` }), grid);
  out.dataset.qid = qid;
  await fillMissing(grid, state.collection, terms);
}

function wire() {
  wired = true;
  $('evalform').addEventListener('submit', (event) => {
    event.preventDefault();
    run().catch((err) => { $('eval-status').textContent = ''; showError(err); });
  });
  $('dataset').addEventListener('change', fillSplits);
  $('eval-measure').addEventListener('change', chart);
}

export async function show(s) {
  if (!wired) wire();
  if (datasets === null) await loadDatasets();
  if (s.dataset) $('dataset').value = s.dataset;
  fillSplits();
  if (filledFor !== s.collection) {
    const info = await collectionInfo(s.collection);
    const all = defaultPipeline(info);
    $('pipe-a').value = pretty({ ...all, retrieve: all.retrieve.slice(0, 1), fields: [] });
    $('pipe-b').value = pretty({ ...all, fields: [] });
    filledFor = s.collection;
  }
}
