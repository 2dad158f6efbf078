import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import { Frame, sseText } from './frame.js';

/**
 * A Server-Sent Events writer, after better-sse: the right headers, `retry:` on connect, a `: ping` comment
 * on an interval, `close` for disconnect and `drain` for backpressure. `signal` aborts when the client goes,
 * so a feed awaiting the next event can stop at once.
 *
 * Two ways to write. `write(frame)` is the fast one, for a frame rendered once and shared by every reader
 * (runs/frames.ts): on a chunked HTTP/1.1 response — every SSE response of an HTTP/1.1 client — the frame's
 * ready-made chunk goes straight to the socket, one `socket.write` of a shared buffer, no string building, no
 * promise. `send` is the queued one (replays, backpressure): it writes and, when the socket is full, waits for it
 * to drain — for at most `writeTimeoutMs`, then the connection is cut.
 */
export interface SseStream {
  /** Aborted when the connection closes (either side). */
  readonly signal: AbortSignal;
  /** The socket takes more without waiting (it is open and its buffer is under its high-water mark). */
  readonly ready: boolean;
  /** Write a frame now, whatever the socket's buffer holds (check `ready` first to respect backpressure). */
  write(frame: Frame): void;
  /**
   * Write one event; resolves once the socket has room again (backpressure). False if the client is gone.
   * Without `event` the frame has no `event:` line (a plain message); `raw` data is written as it is, not as JSON.
   */
  send(event: { id?: number; event?: string; data: unknown; raw?: boolean } | Frame): Promise<boolean>;
  /** End the response (the server is done). */
  end(): void;
}

export interface SseOptions {
  retryMs: number;
  /** Called once when the stream closes (either side): what the stream held is given back here. */
  onClose?: () => void;
  /** A client that reads nothing for this long while its buffer is full is disconnected (default 30 000). */
  writeTimeoutMs?: number;
}

/** The internals of Node's HTTP response we read, and nothing else: whether it is chunked, and its socket. */
type NodeResponse = Response & { chunkedEncoding?: boolean };
type NodeSocket = Socket & { _httpMessage?: unknown };

const PING = new Frame(': ping\n\n');

/** Something the shared keep-alive sweep visits: an SSE stream (a `: ping` comment), a WebSocket (a ping frame). */
export interface KeepAlive {
  ping(): void;
}

/**
 * Every open stream of the app — SSE responses and WebSockets — and the one timer that pings them all: a stream
 * costs no timer of its own. The sweep writes a `: ping` comment to each SSE stream whose socket has room (a full
 * one needs no more bytes) and pings each WebSocket (ws.ts: one that has not answered the last ping is closed).
 */
export function createSseHub(opts: { pingMs: number }) {
  const open = new Set<KeepAlive>();
  let streams = 0;
  let timer: NodeJS.Timeout | null = null;

  function sweep() {
    for (const s of open) s.ping();
  }

  function add(s: KeepAlive) {
    open.add(s);
    if (!timer) {
      timer = setInterval(sweep, opts.pingMs);
      timer.unref();
    }
  }
  function remove(s: KeepAlive) {
    open.delete(s);
    if (open.size === 0 && timer) {
      clearInterval(timer);
      timer = null;
    }
  }
  const hub: Hub = {
    add(s) {
      streams++;
      add(s);
    },
    remove(s) {
      streams--;
      remove(s);
    },
  };

  return {
    /** Start an SSE response on `res`. */
    open(req: Request, res: Response, o: SseOptions): SseStream {
      return new Stream(req, res, o, hub);
    },
    /** Visit `s` on every sweep from now on (another kind of stream: a WebSocket); returns the function that stops it. */
    keepAlive(s: KeepAlive): () => void {
      add(s);
      return () => remove(s);
    },
    /** Open SSE streams. */
    get size() {
      return streams;
    },
  };
}

/** What a resume cursor may be: an event id (a run's `seq`, a Response event's `sequence_number`). */
export const CURSOR = /^\d{1,9}$/;
export type SseHub = ReturnType<typeof createSseHub>;
interface Hub {
  add(s: Stream): void;
  remove(s: Stream): void;
}

/**
 * One SSE response. A class, so that an open stream — there may be tens of thousands, mostly idle — holds its state
 * and two listeners, and shares its methods.
 */
class Stream implements SseStream {
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #res: Response;
  readonly #socket: NodeSocket;
  /** Chunked, and the socket's response is this one (no pipelined request behind it): frames go to the socket. */
  readonly #direct: boolean;
  readonly #drainer: NodeJS.EventEmitter;
  readonly #hub: Hub;
  readonly #opts: SseOptions;
  /** The connection closed, or we ended it. */
  #closed = false;
  #finished = false;
  /** The last write filled the socket's buffer: nothing more until it drains (or the queued path waits for it). */
  #full = false;
  #corked = false;

  constructor(req: Request, res: Response, opts: SseOptions, hub: Hub) {
    this.signal = this.#controller.signal;
    this.#res = res;
    this.#hub = hub;
    this.#opts = opts;
    res.status(200);
    res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
    res.setHeader('Cache-Control', 'no-cache, no-transform');
    // No `Connection` header of ours: Node answers keep-alive or close as the client asked (HTTP/1.1 keeps alive by
    // default, `Connection: close` is honoured), and HTTP/2 forbids the header altogether.
    res.setHeader('X-Accel-Buffering', 'no');
    res.flushHeaders();
    const socket = (this.#socket = req.socket as NodeSocket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true);
    // Chunked (every HTTP/1.1 client): frames go to the socket as ready-made chunks. Else (HTTP/1.0) through `res`.
    this.#direct = (res as NodeResponse).chunkedEncoding === true && socket._httpMessage === res;
    this.#drainer = this.#direct ? socket : res;
    this.#drainer.on('drain', this.#onDrain);
    res.on('close', this.#finish);
    hub.add(this);
    // The client may have gone while the route was still authorising: 'close' has then fired already.
    if (res.destroyed || socket.destroyed) this.#finish();
    this.write(new Frame(`retry: ${opts.retryMs}\n\n`));
  }

  readonly #onDrain = () => {
    this.#full = false;
  };

  readonly #finish = () => {
    this.#closed = true;
    if (this.#finished) return;
    this.#finished = true;
    this.#drainer.off('drain', this.#onDrain);
    this.#hub.remove(this);
    this.#opts.onClose?.();
    if (!this.#controller.signal.aborted) this.#controller.abort();
  };

  get ready() {
    return !this.#closed && !this.#full;
  }

  ping() {
    if (this.ready) this.write(PING);
  }

  write(frame: Frame) {
    if (this.#closed) return;
    if (!(this.#direct ? this.#socket.write(frame.chunk) : this.#res.write(frame.text))) this.#full = true;
  }

  async send(e: { id?: number; event?: string; data: unknown; raw?: boolean } | Frame): Promise<boolean> {
    if (this.#closed) return false;
    // Frames written in one turn of the event loop (a replay) leave in one socket write.
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      setImmediate(() => this.#uncork());
    }
    this.write(e instanceof Frame ? e : new Frame(sseText(e.id, e.event, e.data, e.raw)));
    if (!this.#full) return true;
    this.#uncork();
    // The socket buffer is full: wait for room or for the client to leave, never forever — a peer that
    // keeps the connection open but reads nothing is disconnected, so its feed and run entry are freed.
    await this.#drained();
    return !this.#controller.signal.aborted;
  }

  end() {
    this.#closed = true;
    this.#uncork();
    if (!this.#res.writableEnded) this.#res.end();
  }

  #uncork() {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  }

  /** Wait until the socket has room, or the client leaves; a peer that reads nothing for writeTimeoutMs is cut. */
  #drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (!this.#full || this.#closed) return resolve();
      const timer = setTimeout(() => this.#res.destroy(), this.#opts.writeTimeoutMs ?? 30_000);
      const signal = this.#controller.signal;
      const done = () => {
        clearTimeout(timer);
        this.#drainer.off('drain', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#drainer.on('drain', done);
      signal.addEventListener('abort', done);
    });
  }
}

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
