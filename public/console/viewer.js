// A run's output, live: the text token by token, its progress, its connection, and how it ended.
import { follow, setConn } from './stream.js';
import { badge, button, fill, h, sats, short } from './ui.js';

/** What the top bar says for each state of the stream in view. */
const HEADER = {
  connecting: () => 'connecting…',
  live: () => 'live',
  reconnecting: (id) => `reconnecting after #${id}…`,
  offline: (id) => `offline · will resume after #${id}`,
  resumed: (id) => (id ? `resumed after #${id}` : 'reattached'),
  ended: () => 'stream ended',
  failed: () => 'stream lost',
};

/**
 * A viewer in `root`. `watch(run)` follows a run's stream from its first event (a reload replays it whole, then
 * goes live); `onStop(runId)` is offered while the run is live; `onEnd(final)` is told how it ended.
 */
export function createViewer(root, { title = 'Output', placeholder = 'Nothing to show yet.', onStop, onEnd, active = () => true } = {}) {
  const heading = h('h2', { class: 'grow' }, title);
  const state = h('span');
  const stop = button('■ Stop', () => current && onStop?.(current.runId), 'danger small', { hidden: true, id: `${root.id}-stop` });

  const out = h('div', { class: 'out', dataset: { placeholder }, 'aria-live': 'off' });
  const tokensEl = h('b', {}, '0');
  const rateEl = h('b', {}, '–');
  const timeEl = h('b', {}, '–');
  const lastEl = h('b', {}, '–');
  const stats = h('div', { class: 'stats' }, h('span', {}, 'tokens ', tokensEl), h('span', {}, 'rate ', rateEl, ' tok/s'), h('span', {}, 'elapsed ', timeEl), h('span', {}, 'last event ', lastEl));
  const line = h('div', { class: 'streamline', dataset: { state: 'idle' }, role: 'status' }, h('span', { class: 'dot' }), h('span', { class: 'text' }, 'no stream'));
  const outcome = h('div', { class: 'outcome', hidden: true });
  // Inside another card (a job's step, which shows the state itself) the viewer has no head of its own.
  fill(root, h('div', { class: 'card-head', hidden: !title }, heading, state, stop), out, stats, line, outcome);

  let current = null;
  let stream = null;
  let tokens = 0;
  let firstAt = 0;
  let ticker = null;

  const setState = (s) => fill(state, s ? badge(s) : '');
  function tick() {
    if (!firstAt) return;
    const secs = (performance.now() - firstAt) / 1000;
    timeEl.textContent = `${secs.toFixed(1)} s`;
    rateEl.textContent = secs > 0.2 ? (tokens / secs).toFixed(1) : '–';
  }

  function status({ state: s, note, lastId }) {
    line.dataset.state = s;
    line.querySelector('.text').textContent = note;
    lastEl.textContent = lastId ? `#${lastId}` : '–';
    if (active()) setConn(s, HEADER[s]?.(lastId) ?? s);
  }

  return {
    get runId() {
      return current?.runId ?? null;
    },
    /** Follow `run` ({ runId, url, state, reattached }) from its first event. */
    watch(run) {
      this.clear();
      current = run;
      heading.textContent = `${title} · ${short(run.runId)}`;
      setState(run.state ?? 'queued');
      stop.hidden = !onStop;
      out.classList.add('live');
      ticker = setInterval(tick, 250);
      stream = follow(run.url, {
        reattached: run.reattached,
        onStatus: status,
        onEvent(type, data) {
          if (type === 'run') return setState(data.state);
          if (type !== 'token') return;
          if (!firstAt) firstAt = performance.now();
          tokens++;
          tokensEl.textContent = String(tokens);
          out.append(h('span', { class: 'tok' }, data.content));
          if (out.scrollHeight - out.scrollTop - out.clientHeight < 80) out.scrollTop = out.scrollHeight;
          if (state.textContent !== 'executing') setState('executing');
        },
        onEnd(type, data) {
          tick();
          clearInterval(ticker);
          stop.hidden = true;
          out.classList.remove('live');
          out.classList.add('ended');
          const final = { type, ...data };
          setState(data?.state ?? 'failed');
          outcome.hidden = false;
          outcome.className = `outcome ${data?.state ?? 'failed'}`;
          fill(
            outcome,
            type === 'done'
              ? [
                  h('b', {}, data.state), ` · ${data.usage.inputTokens} in + ${data.usage.outputTokens} out tokens · charged `,
                  h('b', {}, sats(data.chargedSats)), ` of ${sats(data.debitedSats)} held, `, h('b', {}, sats(data.refundedSats)), ' back',
                ]
              : [h('b', {}, data?.state === 'rejected' ? 'rejected' : 'failed'), ` · ${data?.message ?? 'the run failed'}`, data?.refundedSats ? ` · ${sats(data.refundedSats)} refunded` : ''],
          );
          onEnd?.(final);
        },
      });
    },
    setState,
    /** Stop showing anything. */
    clear() {
      stream?.close();
      stream = null;
      clearInterval(ticker);
      current = null;
      tokens = 0;
      firstAt = 0;
      tokensEl.textContent = '0';
      rateEl.textContent = timeEl.textContent = lastEl.textContent = '–';
      out.replaceChildren();
      out.classList.remove('live', 'ended');
      outcome.hidden = true;
      stop.hidden = true;
      heading.textContent = title;
      setState(null);
      line.dataset.state = 'idle';
      line.querySelector('.text').textContent = 'no stream';
    },
    /** The text shown, joined. */
    text: () => out.textContent,
  };
}
