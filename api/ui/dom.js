// DOM helpers: every node is built with the DOM API (never innerHTML), so document text
// can hold any characters.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const SVG_NS = 'http://www.w3.org/2000/svg';

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export const $ = (id) => document.getElementById(id);

// Query terms: letters and digits, lowercased, two characters or more.
export function queryTerms(query) {
  const terms = new Set();
  for (const m of (query || '').toLowerCase().matchAll(/[\p{L}\p{N}]+/gu)) {
    if (m[0].length >= 2) terms.add(m[0]);
  }
  return [...terms].sort((a, b) => b.length - a.length);
}

function termPattern(terms) {
  if (!terms.length) return null;
  const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  // a term at the start of a word (so "lift" marks "lifts" and "lifting")
  return new RegExp(`(?<![\\p{L}\\p{N}])(?:${escaped.join('|')})`, 'giu');
}

// Text nodes and <mark> elements for `text` with the query terms marked.
export function highlighted(text, terms) {
  const pattern = termPattern(terms);
  const out = [];
  if (!pattern) return [document.createTextNode(text)];
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
    out.push(el('mark', { text: m[0] }));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(document.createTextNode(text.slice(last)));
  return out;
}

// A window of about `width` characters of `text` around its first query term.
export function snippet(text, terms, width = 260) {
  if (!text) return '';
  if (text.length <= width) return text;
  const pattern = termPattern(terms);
  const m = pattern ? pattern.exec(text) : null;
  let start = m ? Math.max(0, m.index - Math.floor(width / 3)) : 0;
  if (start > 0) {
    const space = text.indexOf(' ', start);
    if (space !== -1 && space - start < 20) start = space + 1;
  }
  const end = Math.min(text.length, start + width);
  return (start > 0 ? '… ' : '') + text.slice(start, end) + (end < text.length ? ' …' : '');
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i && v < 10 ? 1 : 0)} ${units[i]}`;
}

export function num(value, digits = 4) {
  if (value === null || value === undefined) return '—';
  if (typeof value !== 'number') return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function ms(value) {
  return value === null || value === undefined ? '—' : `${Number(value).toFixed(1)} ms`;
}

// JSON.parse with a one-line error naming the line and column.
export function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (e) {
    const msg = String(e.message || e);
    let line; let col;
    const lc = msg.match(/line (\d+) column (\d+)/);
    const pos = msg.match(/position (\d+)/);
    if (lc) { line = Number(lc[1]); col = Number(lc[2]); } else {
      const at = pos ? Number(pos[1]) : text.length;
      const before = text.slice(0, at).split('\n');
      line = before.length; col = before[before.length - 1].length + 1;
    }
    const reason = msg.replace(/^JSON\.parse: /, '').replace(/ (in JSON )?at (line \d+ column \d+ of the JSON data|position \d+).*$/, '')
      .replace(/ in JSON$/, '');
    const err = new Error(`${what}: invalid JSON at line ${line}, column ${col}: ${reason}`);
    err.line = line; err.column = col;
    throw err;
  }
}
