// Document view: the stored document and where it ranks in each index for the current query.

import { api, path } from './api.js';
import { $, clear, el, highlighted, num, queryTerms } from './dom.js';
import { collectionInfo, state, urlFor } from './app.js';
import { columnsOf, defaultPipeline, explainSearch, pretty } from './search.js';

export async function show(s) {
  $('doc-back').href = urlFor({ view: 'search', doc: '' });
  const title = $('doc-title');
  title.textContent = s.doc || '(no document named)';
  for (const id of ['doc-facts', 'doc-text', 'doc-meta']) clear($(id));
  const tbody = clear($('doc-ranks').tBodies[0]);
  $('doc-query').textContent = s.q || '(none)';
  if (!s.doc) throw new Error('no document id in the link (doc=ID)');
  const doc = await api('GET', path('/collections', s.collection, 'documents', s.doc));
  if (state.doc !== s.doc) return;
  const terms = queryTerms(s.q);
  title.textContent = doc.title || doc.id;
  const facts = $('doc-facts');
  for (const [name, value] of [['id', doc.id], ['collection', s.collection], ['version', doc.version],
    ['characters', (doc.text || '').length]]) {
    facts.append(el('dt', { text: name }), el('dd', {}, el('code', { text: String(value) })));
  }
  $('doc-text').append(...highlighted(doc.text || '', terms));
  $('doc-meta').textContent = pretty(doc.metadata || {});
  if (!s.q) {
    tbody.append(el('tr', {}, el('td', { colspan: 3, text: 'no query: open the document from a search to see its ranks' })));
    return;
  }
  let pipeline;
  try { pipeline = s.pipeline ? JSON.parse(s.pipeline) : null; } catch { pipeline = null; }
  if (!pipeline) pipeline = defaultPipeline(await collectionInfo(s.collection));
  const response = await explainSearch(s.collection, s.q, pipeline, { reuse: true });
  for (const column of columnsOf(response, pipeline)) {
    const rank = column.ranks.get(doc.id);
    const hit = rank ? column.hits[rank - 1] : null;
    tbody.append(el('tr', { class: rank ? '' : 'absent' },
      el('th', { scope: 'row', text: column.name }),
      el('td', { text: rank ? `#${rank}` : `not in the top ${column.hits.length}` }),
      el('td', { text: hit ? num(hit.score) : '—' })));
  }
}
