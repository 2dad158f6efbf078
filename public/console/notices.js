// The session's notices over one WebSocket (GET /api/ws): a message when a run of the session is created, starts
// or ends, so the runs list and the balance follow at once instead of being polled for. The polls stay as a slow
// safety net, and take over (quick while something runs) whenever the socket is down; it reconnects by itself.

const MAX_BACKOFF_MS = 30_000;

/** For the browser checks: what the socket did. */
const debug = (window.sluiceConsole ??= { streams: [] });

/**
 * Watch the notices of the session whose token is `token`: `onNotice({ runId, state })` for each, and
 * `onNotice(null)` when some may have been missed (the socket was down or fell behind: look again).
 * Returns { live, close() }.
 */
export function watchSession(token, onNotice) {
  let ws = null;
  let closed = false;
  let attempt = 0;
  let retry = null;
  const record = (debug.notices = { opens: 0, notices: [] });

  function open() {
    if (closed) return;
    ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/api/ws?access_token=${encodeURIComponent(token)}`);
    ws.onopen = () => {
      attempt = 0;
      record.opens++;
      ws.send(JSON.stringify({ type: 'subscribe', session: true }));
      // Whatever happened while it was down is not lost: the list is read again.
      onNotice(null);
    };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'run') {
        record.notices.push(`${m.runId.slice(0, 8)}:${m.state}`);
        onNotice({ runId: m.runId, state: m.state });
      } else if (m.type === 'resync' && m.session) {
        ws.send(JSON.stringify({ type: 'subscribe', session: true }));
        onNotice(null);
      }
    };
    ws.onclose = () => {
      ws = null;
      if (closed) return;
      clearTimeout(retry);
      retry = setTimeout(open, Math.min(500 * 2 ** attempt++, MAX_BACKOFF_MS));
    };
  }

  function onOnline() {
    if (ws || closed) return;
    clearTimeout(retry);
    open();
  }

  window.addEventListener('online', onOnline);
  open();
  return {
    get live() {
      return ws?.readyState === WebSocket.OPEN;
    },
    close() {
      closed = true;
      clearTimeout(retry);
      window.removeEventListener('online', onOnline);
      ws?.close();
    },
  };
}
