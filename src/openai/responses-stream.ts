import type { Request, Response } from 'express';
import type { AppContext } from '../context.js';
import { stopRun } from '../runs/control.js';
import { isTerminalEvent } from '../runs/registry.js';
import { feedFor, openStream } from '../runs/stream.js';
import { isLive, type RunRow } from '../runs/store.js';
import { logCursorFor, preludeEvents, responseEventsOf, type ResponseStreamEvent } from './stream-map.js';

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
  const send = (e: ResponseStreamEvent) => (e.sequence_number > after ? sse.send({ id: e.sequence_number, event: e.type, data: e }) : Promise.resolve(true));
  try {
    for (const e of preludeEvents(row)) if (!(await send(e))) return;
    // A finished run is read from its log up to its final event at once (never waiting for news that cannot come).
    let cursor = logCursorFor(after);
    if (opts.finished ?? !isLive(row.state)) cursor = Math.min(cursor, Math.max(0, row.lastSeq - 1));
    let last = after;
    for await (const item of feedFor(ctx, row.id, cursor, sse.signal)) {
      if (item.kind === 'resync') {
        // Too slow to keep up: say where to resume (a frame without an id, so it never moves a cursor).
        await sse.send({
          event: 'error',
          data: { type: 'error', code: 'stream_resync', message: `the reader fell behind; resume with starting_after=${last}`, param: null, sequence_number: last },
        });
        return;
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
