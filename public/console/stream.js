// Following a run's SSE stream to its end, whatever happens to the connection.
//
// Every event's SSE id is its seq in the run's log. EventSource reconnects by itself after a drop and sends
// Last-Event-ID, and the server replays exactly the gap. When EventSource gives up instead (readyState CLOSED
// without a final event: a failed reconnect, a 429, a restarting server), we reopen it ourselves from the last id
// with ?starting_after=, backing off, and at once when the browser says it is online again. Events at or below
// the last id are never shown twice.

const MAX_ATTEMPTS = 10;

/** For the browser checks (and the curious): what each stream really received, duplicates included. */
const debug = (window.sluiceConsole ??= { streams: [] });

/**
 * Open `url` and follow it. Handlers: onEvent(type, data, id) for every new event, onStatus({ state, note,
 * lastId }) as the connection changes (connecting, live, reconnecting, offline, resumed, ended, failed), and
 * onEnd(type, data) once with the final event. Returns { close() }.
 */
export function follow(url, { onEvent, onStatus, onEnd, reattached = false }) {
  let es = null;
  let lastId = 0;
  let ended = false;
  let closed = false;
  let attempt = 0;
  let dropped = false;
  let retry = null;
  let calm = null;
  const record = { url: url.replace(/access_token=[^&]+/, 'access_token=…'), received: [], duplicates: 0, reconnects: 0, opens: 0, states: [] };
  debug.streams.push(record);
  if (debug.streams.length > 20) debug.streams.shift();

  const status = (state, note = '') => {
    if (record.states.at(-1) !== state) record.states.push(state);
    onStatus?.({ state, note, lastId });
  };

  function open() {
    if (closed) return;
    const u = lastId > 0 ? `${url}${url.includes('?') ? '&' : '?'}starting_after=${lastId}` : url;
    es = new EventSource(u);
    status(dropped ? 'reconnecting' : 'connecting', dropped ? `resuming after event #${lastId}…` : 'connecting…');
    es.onopen = () => {
      record.opens++;
      attempt = 0;
      if (dropped) {
        record.reconnects++;
        status('resumed', `resumed after event #${lastId}: nothing missed, nothing twice`);
      } else if (reattached) {
        status('resumed', 'reattached after a reload: replaying from the first event');
      } else {
        status('live', 'live');
      }
      dropped = false;
      reattached = false;
      // A resumed stream settles back to "live" after a moment, so the indicator shows the resume happened.
      clearTimeout(calm);
      calm = setTimeout(() => !ended && !closed && !dropped && status('live', 'live'), 2500);
    };
    const take = (type) => (ev) => {
      // The `run` frame carries no id: EventSource then repeats the last one it saw, which is not this frame's.
      if (type === 'run') return onEvent?.(type, JSON.parse(ev.data), undefined);
      const id = Number(ev.lastEventId);
      if (ev.lastEventId && id <= lastId) {
        record.duplicates++;
        return;
      }
      if (ev.lastEventId) {
        lastId = id;
        record.received.push(id);
      }
      const data = ev.data ? JSON.parse(ev.data) : null;
      if (type === 'done' || type === 'error') return finish(type, data);
      onEvent?.(type, data, id);
    };
    es.addEventListener('run', take('run'));
    es.addEventListener('token', take('token'));
    es.addEventListener('done', take('done'));
    // `event: error` with data is the run's failure; an Event without data is the connection's trouble.
    es.addEventListener('error', (ev) => (ev.data ? take('error')(ev) : trouble()));
    // Too slow to keep up: the server names the last id it sent; reopen from there.
    es.addEventListener('resync', () => {
      es.close();
      dropped = true;
      open();
    });
  }

  function trouble() {
    if (ended || closed) return;
    dropped = true;
    if (!navigator.onLine) status('offline', `offline · will resume after event #${lastId}`);
    else if (es.readyState === EventSource.CONNECTING) status('reconnecting', `connection lost · reconnecting after event #${lastId}…`);
    if (es.readyState !== EventSource.CLOSED) return;
    // EventSource gave up: try again ourselves, sooner if the browser comes back online.
    if (++attempt > MAX_ATTEMPTS) {
      status('failed', 'could not reconnect; reload to try again');
      return;
    }
    clearTimeout(retry);
    retry = setTimeout(open, Math.min(500 * 2 ** attempt, 15_000));
  }

  function onOnline() {
    if (!dropped || ended || closed) return;
    if (es?.readyState === EventSource.CLOSED) {
      clearTimeout(retry);
      open();
    }
  }

  function finish(type, data) {
    ended = true;
    es.close();
    window.removeEventListener('online', onOnline);
    clearTimeout(calm);
    status('ended', type === 'done' ? `ended · ${data?.state ?? ''}` : `ended · ${data?.code ?? 'error'}`);
    onEnd?.(type, data);
  }

  window.addEventListener('online', onOnline);
  open();
  return {
    get lastId() {
      return lastId;
    },
    close() {
      closed = true;
      clearTimeout(retry);
      clearTimeout(calm);
      window.removeEventListener('online', onOnline);
      es?.close();
    },
  };
}

/** The stream indicator in the top bar: it shows the stream of the panel in view. */
export function setConn(state, text) {
  const el = document.getElementById('conn');
  if (!el) return;
  el.dataset.state = state;
  el.querySelector('.conn-text').textContent = text;
}
