// Asking, and the session's runs: newest first, live ones with their progress and a stop button.
import { api, store } from './api.js';
import { watchSession } from './notices.js';
import { createViewer } from './viewer.js';
import { ago, badge, button, fill, h, problem, sats, short, toast } from './ui.js';

const LIVE = new Set(['queued', 'executing']);
const SAMPLE = 'Explain how a sluice gate controls the flow of water [stub:tokens=60] [stub:delay=60]';

/** `session()` gives the session panel's state; `onSpent()` asks it to refresh (a run moved the balance). */
export function createRunsPanel({ askCard, viewerCard, listCard, session, onSpent, active }) {
  let runs = [];
  let cursor = null;
  let timer = null;
  // The session's notices (a WebSocket): the list follows runs as they start and end, without polling for them.
  let notices = null;
  let noticesToken = null;
  let soon = null;
  const viewer = createViewer(viewerCard, {
    title: 'Run',
    placeholder: 'Send a request: its tokens stream in here, and a reload or a dropped connection picks up exactly where it was.',
    onStop: stop,
    onEnd: () => {
      refresh();
      onSpent();
    },
    active,
  });

  const text = h('textarea', { id: 'request', 'aria-label': 'Request', maxlength: 8000 }, SAMPLE);
  const maxTokens = h('input', { type: 'number', min: '1', placeholder: 'max tokens', class: 'narrow', id: 'max-tokens', 'aria-label': 'max_tokens (optional)' });
  const send = button('Send ⏎', ask, '', { id: 'ask', disabled: true });
  const chip = (d) => h('button', { class: 'chip', type: 'button', onclick: () => { text.value = `${text.value.replace(/\s*\[stub:[^\]]*\]/g, '')} ${d}`.trim(); text.focus(); } }, d);
  text.addEventListener('keydown', (e) => e.key === 'Enter' && (e.metaKey || e.ctrlKey) && !send.disabled && ask());
  fill(
    askCard,
    h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Ask')),
    text,
    h('div', { class: 'chips' }, h('span', { class: 'hint' }, 'stub directives:'), ['[stub:tokens=120] [stub:delay=50]', '[stub:tokens=12]', '[stub:fail]'].map(chip)),
    h('div', { class: 'row' }, maxTokens, h('span', { class: 'grow hint', id: 'ask-hint' }, 'Create and pay a session first.'), send),
  );

  async function ask() {
    const s = session();
    if (!s?.creds) return;
    send.disabled = true;
    try {
      const body = { request: text.value };
      if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
      const r = await api('POST', `/sessions/${s.creds.id}/request`, { body, token: s.creds.token });
      watch(r.requestId, 'queued');
      onSpent();
      refresh();
    } catch (err) {
      toast(problem(err), 'bad');
    } finally {
      send.disabled = !(session()?.session?.state === 'active');
    }
  }

  async function stop(runId) {
    const s = session();
    try {
      await api('POST', `/runs/${runId}/stop`, { token: s.creds.token });
      toast(`Stopping ${short(runId)}…`);
      refresh();
    } catch (err) {
      toast(problem(err), 'bad');
    }
  }

  /** Follow a run in the viewer from its first event (remembered, so a reload picks it up again). */
  function watch(runId, state, reattached = false) {
    const s = session();
    if (!s?.creds) return;
    store.set('viewer', runId);
    viewer.watch({ runId, state, reattached, url: `/api/runs/${runId}/stream?access_token=${encodeURIComponent(s.creds.token)}` });
    renderList();
  }

  async function refresh(more = false) {
    const s = session();
    clearTimeout(timer);
    if (!s?.creds) return;
    try {
      const q = more && cursor ? `?limit=10&cursor=${encodeURIComponent(cursor)}` : `?limit=${Math.min(100, Math.max(10, runs.length))}`;
      const page = await api('GET', `/runs${q}`, { token: s.creds.token });
      runs = more ? [...runs, ...page.data] : page.data;
      cursor = page.nextCursor;
      renderList();
    } catch (err) {
      if (err.status !== 401 && err.status !== 404 && err.status !== 429 && err.status !== 0) toast(problem(err), 'bad');
    } finally {
      // Quick while something runs (its progress moves), slow otherwise — and slow whenever the notices are live:
      // they tell of every start and end, and this poll only moves the progress bars along.
      clearTimeout(timer);
      timer = setTimeout(refresh, runs.some((r) => LIVE.has(r.state)) ? (notices?.live ? 5000 : 1500) : 10_000);
    }
  }

  function renderList() {
    listCard.hidden = runs.length === 0;
    fill(
      listCard,
      h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Runs'), h('span', { class: 'hint' }, 'newest first')),
      h(
        'div',
        { class: 'runs', id: 'runs' },
        runs.map((r) => {
          const live = LIVE.has(r.state);
          return h(
            'div',
            { class: `run-row${viewer.runId === r.runId ? ' selected' : ''}`, dataset: { runId: r.runId, state: r.state }, onclick: () => watch(r.runId, r.state), title: 'Show this run' },
            badge(r.state),
            h('div', {}, h('div', { class: 'req' }, r.request), live ? h('div', { class: 'bar' }, h('span')) : null),
            h('div', { class: 'meta' }, `${r.usage.outputTokens} tok · ${live ? `${sats(r.debitedSats)} held` : sats(r.chargedSats)} · ${ago(r.createdAt)}`),
            live ? button('Stop', (e) => (e.stopPropagation(), stop(r.runId)), 'danger small') : h('span'),
          );
        }),
      ),
      cursor ? h('div', { class: 'row' }, button('Load more', () => refresh(true), 'ghost small')) : null,
    );
  }

  /** Follow the notices of the session with this token (or none): a run's news refreshes the list, and its end the balance. */
  function listen(token) {
    if (token === noticesToken) return;
    notices?.close();
    notices = null;
    noticesToken = token;
    if (!token) return;
    notices = watchSession(token, (n) => {
      // Several notices in a burst cost one read of the list.
      clearTimeout(soon);
      soon = setTimeout(() => refresh(), 50);
      if (n && !LIVE.has(n.state)) onSpent();
    });
  }

  return {
    /** The session changed (or is gone): enable asking, reattach the remembered run, load the list. */
    sessionChanged(s) {
      listen(s ? session()?.creds?.token ?? null : null);
      const ok = s?.state === 'active';
      send.disabled = !ok;
      document.getElementById('ask-hint').textContent = !s ? 'Create and pay a session first.' : ok ? 'Ctrl+Enter sends.' : `The session is ${s.state.replaceAll('_', ' ')}.`;
      if (!s) {
        runs = [];
        viewer.clear();
        renderList();
        return;
      }
      if (!viewer.runId && store.get('viewer')) watch(store.get('viewer'), 'queued', true);
      if (runs.length === 0) refresh();
    },
    watch,
    viewer,
  };
}
