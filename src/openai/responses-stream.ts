import type { Request, Response } from 'express';
import type { AppContext } from '../context.js';
import { Frame, sseText } from '../http/frame.js';
import { stopRun } from '../runs/control.js';
import { faceFrame } from '../runs/frames.js';
import { isTerminalEvent, type RunEvent } from '../runs/registry.js';
import { feedFor, openStream } from '../runs/stream.js';
import { isLive, type RunRow } from '../runs/store.js';
import { logCursorFor, preludeEvents, responseEventsOf, tokenSequence, type ResponseStreamEvent } from './stream-map.js';

/** Where each run event's Responses frame is kept on the event (made once, for every reader of the run). */
const RESPONSES = Symbol('sluice.responses-frame');

/**
 * Write a response's stream after Response event `after` (-1: the whole stream from `response.created`): the
 * prelude, then the run's log mapped event by event, replayed and then live, ending with the terminal event.
 * Closing the connection only detaches — unless `stopOnClose` (an ephemeral `store: false` response), which
 * cancels the run, charging what it produced.
 */
export async function writeResponseStream(ctx: AppContext, req: Request, res: Response, row: RunRow, after: number, opts: { stopOnClose: boolean; finished?: boolean }) {
  const sse = openStream(ctx, req, res);
  let ended = false;
  if (opts.stopOnClose) {
    sse.signal.addEventListener('abort', () => {
      if (!ended) stopRun(ctx, row.id).catch((err) => req.log.warn({ err }, 'stopping an abandoned ephemeral response failed'));
    });
  }
  const frame = (e: ResponseStreamEvent) => new Frame(sseText(e.sequence_number, e.type, e));
  const send = (e: ResponseStreamEvent) => (e.sequence_number > after ? sse.send(frame(e)) : Promise.resolve(true));
  // A token's Response event is a pure function of the run and the event: rendered once for all its readers, and
  // written from `publish` itself to a reader that is caught up (feed.ts). Final events take the queued path.
  const tokenFrame = (e: RunEvent) =>
    faceFrame(e, RESPONSES, (t) => {
      const [only] = responseEventsOf(row, t);
      return only ? sseText(only.sequence_number, only.type, only) : null;
    });
  const direct = (e: RunEvent) => {
    if (e.type !== 'token' || tokenSequence(e) <= after || !sse.ready) return false;
    const f = tokenFrame(e);
    if (!f) return false;
    sse.write(f);
    return true;
  };
  try {
    for (const e of preludeEvents(row)) if (!(await send(e))) return;
    // A finished run is read from its log up to its final event at once (never waiting for news that cannot come).
    let cursor = logCursorFor(after);
    const finished = opts.finished ?? !isLive(row.state);
    if (finished) cursor = Math.min(cursor, Math.max(0, row.lastSeq - 1));
    let last = after;
    for await (const item of feedFor(ctx, row.id, cursor, sse.signal, { direct, follow: !finished })) {
      if (item.kind === 'resync') {
        // Too slow to keep up: say where to resume (a frame without an id, so it never moves a cursor). Tokens the
        // feed wrote directly were never yielded here: the feed's last event says where the stream got to.
        last = Math.max(last, item.lastEventId > 0 ? tokenSequence({ seq: item.lastEventId, type: 'token', data: null }) : 0);
        await sse.send({
          event: 'error',
          data: { type: 'error', code: 'stream_resync', message: `the reader fell behind; resume with starting_after=${last}`, param: null, sequence_number: last },
        });
        return;
      }
      if (item.event.type === 'token' && tokenSequence(item.event) > after) {
        const f = tokenFrame(item.event);
        if (f && !(await sse.send(f))) return;
        last = Math.max(last, tokenSequence(item.event));
        continue;
      }
      for (const e of responseEventsOf(row, item.event)) {
        if (!(await send(e))) return;
        last = Math.max(last, e.sequence_number);
      }
      if (isTerminalEvent(item.event)) {
        ended = true;
        return;
      }
    }
  } finally {
    sse.end();
  }
}
