import type { Request, Response } from 'express';

/**
 * A Server-Sent Events writer, after better-sse: the right headers, `retry:` on connect, a `: ping` comment
 * on an interval, `close` for disconnect and `drain` for backpressure. `signal` aborts when the client goes,
 * so a feed awaiting the next event can stop at once.
 */
export interface SseStream {
  /** Aborted when the connection closes (either side). */
  readonly signal: AbortSignal;
  /**
   * Write one event; resolves once the socket has room again (backpressure). False if the client is gone.
   * Without `event` the frame has no `event:` line (a plain message); `raw` data is written as it is, not as JSON.
   */
  send(event: { id?: number; event?: string; data: unknown; raw?: boolean }): Promise<boolean>;
  /** End the response (the server is done). */
  end(): void;
}

export interface SseOptions {
  retryMs: number;
  pingMs: number;
  /** A client that reads nothing for this long while its buffer is full is disconnected (default 30 000). */
  writeTimeoutMs?: number;
}

export function openSse(req: Request, res: Response, opts: SseOptions): SseStream {
  const controller = new AbortController();
  res.status(200);
  res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
  res.setHeader('Cache-Control', 'no-cache, no-transform');
  // No `Connection` header of ours: Node answers keep-alive or close as the client asked (HTTP/1.1 keeps alive by
  // default, `Connection: close` is honoured), and HTTP/2 forbids the header altogether.
  res.setHeader('X-Accel-Buffering', 'no');
  res.flushHeaders();
  req.socket.setNoDelay(true);
  req.socket.setKeepAlive(true);

  // Frames written in one turn of the event loop (a burst of tokens, a replay) leave in one socket write.
  let corked = false;
  const write = (chunk: string): boolean => {
    if (!corked) {
      corked = true;
      res.cork();
      setImmediate(() => {
        corked = false;
        res.uncork();
      });
    }
    return res.write(chunk);
  };

  const ping = setInterval(() => {
    // A client whose buffer is already full needs no more bytes from us.
    if (!res.writableEnded && !res.writableNeedDrain) write(': ping\n\n');
  }, opts.pingMs);
  ping.unref();
  const finish = () => {
    clearInterval(ping);
    if (!controller.signal.aborted) controller.abort();
  };
  res.on('close', finish);
  // The client may have gone while the route was still authorising: 'close' has then fired already.
  if (res.destroyed || req.socket.destroyed) finish();
  write(`retry: ${opts.retryMs}\n\n`);
  const writeTimeoutMs = opts.writeTimeoutMs ?? 30_000;

  return {
    signal: controller.signal,
    async send({ id, event, data, raw }) {
      if (controller.signal.aborted || res.writableEnded) return false;
      const frame = `${id !== undefined ? `id: ${id}\n` : ''}${event ? `event: ${event}\n` : ''}data: ${raw ? String(data) : JSON.stringify(data)}\n\n`;
      if (write(frame)) return true;
      // The socket buffer is full: wait for room or for the client to leave, never forever — a peer that
      // keeps the connection open but reads nothing is disconnected, so its feed and run entry are freed.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => res.destroy(), writeTimeoutMs);
        const done = () => {
          clearTimeout(timer);
          res.off('drain', done);
          controller.signal.removeEventListener('abort', done);
          resolve();
        };
        res.on('drain', done);
        controller.signal.addEventListener('abort', done);
      });
      return !controller.signal.aborted;
    },
    end() {
      clearInterval(ping);
      if (corked) {
        corked = false;
        res.uncork();
      }
      if (!res.writableEnded) res.end();
    },
  };
}

/** What a resume cursor may be: an event id (a run's `seq`, a Response event's `sequence_number`). */
export const CURSOR = /^\d{1,9}$/;

/**
 * The resume cursor: `Last-Event-ID` header (what EventSource sends on reconnect) or `?starting_after=N`.
 * Returns 0 when none; throws on a malformed one so the route answers 400.
 */
export function readCursor(req: Request): number | { error: string } {
  const header = req.get('last-event-id');
  const query = typeof req.query.starting_after === 'string' ? req.query.starting_after : undefined;
  const raw = header ?? query;
  if (raw === undefined || raw === '') return 0;
  if (!CURSOR.test(raw.trim())) return { error: `cursor must be a non-negative integer event id, got ${JSON.stringify(raw)}` };
  return Number(raw.trim());
}
