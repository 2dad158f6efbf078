// Small DOM helpers shared by the console's panels. Everything is built with createElement/textContent (never
// innerHTML with data), so text from a request can never become markup, and nothing needs an inline style.

/** Build an element: h('div', { class: 'x', onclick }, 'text', child, [children]). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const group = new Intl.NumberFormat('en-US');
export const sats = (n) => `${group.format(n)} sat${n === 1 ? '' : 's'}`;
export const signed = (n) => `${n > 0 ? '+' : n < 0 ? '−' : ''}${group.format(Math.abs(n))}`;
export const short = (id) => (id ? String(id).slice(0, 8) : '');

export function ago(iso) {
  if (!iso) return '';
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return new Date(iso).toLocaleDateString();
}

export function until(iso) {
  const s = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  if (s <= 0) return 'now';
  if (s < 3600) return `in ${Math.ceil(s / 60)} min`;
  return `in ${Math.round(s / 3600)} h`;
}

export const badge = (state, label = state) => h('span', { class: `badge ${state}`, dataset: { state } }, String(label).replaceAll('_', ' '));

export const button = (label, onclick, cls = '', props = {}) => h('button', { class: `btn ${cls}`.trim(), type: 'button', onclick, ...props }, label);

/** Copy text, with feedback on the button itself. */
export function copyButton(text, label = 'Copy') {
  const b = button(label, async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Older browsers, or no clipboard permission: select-and-copy through a temporary field.
      const field = h('textarea', { readonly: true }, text);
      document.body.append(field);
      field.select();
      document.execCommand('copy');
      field.remove();
    }
    b.textContent = 'Copied ✓';
    setTimeout(() => (b.textContent = label), 1400);
  }, 'ghost small', { title: 'Copy to the clipboard', dataset: { copy: text } });
  return b;
}

export function toast(message, kind = '') {
  const el = h('div', { class: `toast ${kind}`.trim(), role: 'status' }, message);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'bad' ? 6000 : 3500);
}

/** The message of an API error, with what to do when it is a limit. */
export function problem(err) {
  if (err?.status === 429 && err.retryAfter) return `${err.message} (retry in ${err.retryAfter} s)`;
  return err?.message ?? String(err);
}
