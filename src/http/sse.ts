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
  /** Aborted when the connection closes (either side). Made when first asked for: prefer `gone`. */
  readonly signal: AbortSignal;
  /** The reader leaving, as a feed wants it, without an AbortController: `aborted` once the connection closed. */
  readonly gone: Departure;
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
  add(s: KeepAlive): void;
  remove(s: KeepAlive): void;
}

/**
 * How a reader's leaving is told: an AbortSignal, or anything that has its `aborted` flag and its abort listeners.
 * An SSE stream is one itself (`SseStream.gone`), without the AbortController and EventTarget an idle stream would
 * otherwise hold for as long as it lasts.
 */
export interface Departure {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/**
 * Node's own record of the headers a response was given (`kOutHeaders`, a symbol node:http does not export), found
 * by its description on the first response; null if this Node has no such symbol (then nothing is shed).
 */
let outHeaders: symbol | null | undefined;
const outHeadersOf = (res: Response) =>
  outHeaders === undefined ? (outHeaders = Object.getOwnPropertySymbols(res).find((s) => s.description === 'kOutHeaders') ?? null) : outHeaders;

/** What a response whose head has gone keeps of it: Node reads `_header` only as "the head was rendered". */
const SENT_HEAD = 'HTTP/1.1 200 OK\r\n\r\n';
type HeadState = { _header: string | null; _headerSent: boolean };

/**
 * Forget a sent head. Node keeps, for the life of a response, the headers it was given (an object of `[name, value]`
 * pairs, in dictionary mode: V8 makes a null-prototype object one) and the head rendered from them (`_header`: the
 * status line and every header — Helmet's, CORS's, the request id — near 900 bytes). Once the head is on the socket
 * (`_headerSent`), node:http reads neither again, except `getHeader()` & co. and `_header` as a flag (`headersSent`,
 * `end`, `write`: "the head exists"): read in node:http's own sources (`_http_outgoing`, `_http_server`, Node 20).
 * An SSE stream's headers are never read after it opened (the request log reads the status; the error handler,
 * `headersSent`), so what a stream that lasts hours holds of them is two kilobytes for nothing: dropped here.
 */
function shedHead(res: Response): void {
  const r = res as unknown as HeadState & Record<symbol, unknown>;
  if (!r._headerSent || !r._header) return;
  r._header = SENT_HEAD;
  const key = outHeadersOf(res);
  if (key && r[key] !== undefined) r[key] = null;
}

/** `retry:` frames, one per value (there is one: SSE_RETRY_MS), rather than one per stream. */
const retryFrames = new Map<number, Frame>();
const retryFrame = (ms: number) => {
  let f = retryFrames.get(ms);
  if (!f) retryFrames.set(ms, (f = new Frame(`retry: ${ms}\n\n`)));
  return f;
};

/** The stream a socket or response belongs to, for the listeners every stream shares. */
const STREAM = Symbol('sse stream');
type Owned = { [STREAM]?: Stream };
/** Shared by every stream (`this` is the emitter): an idle stream holds no closure for its listeners. */
function onDrain(this: Owned) {
  this[STREAM]?.drained();
}
function onClose(this: Owned) {
  this[STREAM]?.finish();
}

/**
 * One SSE response. A class, so that an open stream — there may be tens of thousands, mostly idle — holds its state
 * and two listeners, and shares its methods. It holds no AbortController unless someone asks for `signal`: a feed
 * (runs/feed.ts) is told of the reader leaving through `gone`, the stream itself (one listener slot, enough for the
 * one feed a stream has; more go to the lazily made signal).
 */
class Stream implements SseStream, Departure {
  #controller: AbortController | undefined;
  /** The one abort listener held without a controller (the feed's). */
  #onAbort: (() => void) | undefined;
  readonly #res: Response;
  readonly #socket: NodeSocket;
  /** Chunked, and the socket's response is this one (no pipelined request behind it): frames go to the socket. */
  readonly #direct: boolean;
  readonly #hub: Hub;
  readonly #opts: SseOptions;
  /** The connection closed, or we ended it. */
  #closed = false;
  /** The connection closed (either side): the reader is gone. */
  #finished = false;
  /** The last write filled the socket's buffer: nothing more until it drains (or the queued path waits for it). */
  #full = false;
  #corked = false;

  constructor(req: Request, res: Response, opts: SseOptions, hub: Hub) {
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
    shedHead(res);
    const socket = (this.#socket = req.socket as NodeSocket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true);
    // Chunked (every HTTP/1.1 client): frames go to the socket as ready-made chunks. Else (HTTP/1.0) through `res`.
    this.#direct = (res as NodeResponse).chunkedEncoding === true && socket._httpMessage === res;
    const drainer = this.#drainer;
    (drainer as Owned)[STREAM] = this;
    (res as unknown as Owned)[STREAM] = this;
    drainer.on('drain', onDrain);
    res.on('close', onClose);
    hub.add(this);
    // A HEAD asks for the head alone, and has it now. Held open (a HEAD response carries no body, so nothing would
    // ever be written), it would keep its stream slots until the run ended, and a keep-alive client's next request
    // on the connection would wait behind it as long.
    if (req.method === 'HEAD') this.end();
    // The client may have gone while the route was still authorising: 'close' has then fired already.
    if (res.destroyed || socket.destroyed || req.method === 'HEAD') this.finish();
    this.write(retryFrame(opts.retryMs));
  }

  /** What emits 'drain' for our writes: the socket we write to directly, or the response. */
  get #drainer(): NodeJS.EventEmitter {
    return this.#direct ? this.#socket : this.#res;
  }

  /** 'drain' (shared listener): the socket has room again. */
  drained() {
    this.#full = false;
  }

  /** 'close' (shared listener): the connection is gone; what the stream held is given back, once. */
  finish() {
    this.#closed = true;
    if (this.#finished) return;
    this.#finished = true;
    const drainer = this.#drainer;
    drainer.off('drain', onDrain);
    this.#res.off('close', onClose);
    // The socket may carry another response later (keep-alive after HTTP/1.0's end): it must not point here.
    if ((drainer as Owned)[STREAM] === this) (drainer as Owned)[STREAM] = undefined;
    this.#hub.remove(this);
    this.#opts.onClose?.();
    const onAbort = this.#onAbort;
    this.#onAbort = undefined;
    onAbort?.();
    this.#controller?.abort();
  }

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#finished) this.#controller.abort();
    }
    return this.#controller.signal;
  }

  get gone(): Departure {
    return this;
  }

  get aborted() {
    return this.#finished;
  }

  addEventListener(_type: 'abort', listener: () => void) {
    if (this.#finished) return;
    if (!this.#onAbort) this.#onAbort = listener;
    else this.signal.addEventListener('abort', listener);
  }

  removeEventListener(_type: 'abort', listener: () => void) {
    if (this.#onAbort === listener) this.#onAbort = undefined;
    else this.#controller?.signal.removeEventListener('abort', listener);
  }

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
    await this.#waitDrain();
    return !this.#finished;
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
  #waitDrain(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (!this.#full || this.#closed) return resolve();
      const timer = setTimeout(() => this.#res.destroy(), this.#opts.writeTimeoutMs ?? 30_000);
      // The slow path (a full socket): here a signal of its own is no cost worth sparing.
      const signal = this.signal;
      const drainer = this.#drainer;
      const done = () => {
        clearTimeout(timer);
        drainer.off('drain', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      drainer.on('drain', done);
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
  const given = req.query.starting_after;
  // Repeated (`?starting_after=5&starting_after=9`): which one was meant? Not the whole replay a dropped one gave.
  if (given !== undefined && typeof given !== 'string') return { error: 'starting_after must be given once, as a non-negative integer event id' };
  const raw = header ?? given;
  if (raw === undefined || raw === '') return 0;
  if (!CURSOR.test(raw.trim())) return { error: `cursor must be a non-negative integer event id, got ${JSON.stringify(raw)}` };
  return Number(raw.trim());
}
