import type { Request, Response } from 'express';
import type { Config } from '../config.js';
import { AppError, badRequest } from '../http/errors.js';
import type { StreamLimiter } from '../http/stream-limit.js';
import { readCursor, type Departure, type SseHub, type SseStream } from '../http/sse.js';
import { runFeed } from './feed.js';
import type { Followers } from './follow.js';
import { nativeFrame } from './frames.js';
import { isTerminalEvent, type Registry, type RunEvent } from './registry.js';
import { findRun, type FoundRun } from './lookup.js';
import type { RecentRuns } from './recent.js';
import type { RunNews } from './news.js';
import { isLive, type RunStore } from './store.js';

export interface StreamDeps {
  config: Config;
  registry: Registry;
  store: RunStore;
  news: RunNews;
  /** Open streams per client IP (SSE_MAX_STREAMS_PER_IP). */
  streams: StreamLimiter;
  /** Every open SSE stream, pinged by one timer. */
  sse: SseHub;
  /** Runs driven by another process, each read from Postgres once here for all its readers. */
  followers: Followers;
}

/** The resume cursor of a stream request, or 400 for a malformed one. */
export function cursorOf(req: Request): number {
  const c = readCursor(req);
  if (typeof c !== 'number') throw badRequest(c.error);
  return c;
}

/** Open an SSE stream, or `429 too_many_streams` if this client already holds SSE_MAX_STREAMS_PER_IP of them. */
export function openStream(deps: StreamDeps, req: Request, res: Response): SseStream {
  const release = deps.streams.acquire(req.ip ?? req.socket.remoteAddress ?? 'unknown');
  if (!release) {
    const limit = deps.config.SSE_MAX_STREAMS_PER_IP;
    throw new AppError(429, 'too_many_streams', `at most ${limit} streams may be open at once from one client; close one first`, { limit });
  }
  // Given back when the stream closes (at once, if the client went while the route was still authorising).
  return deps.sse.open(req, res, { retryMs: deps.config.SSE_RETRY_MS, writeTimeoutMs: deps.config.SSE_WRITE_TIMEOUT_MS, onClose: release });
}

/**
 * A run's feed (every event after `after`, then live ones, ending with the final one) as configured here. A run
 * no entry here drives is followed (one reader of Postgres for every reader here) unless `follow` is false; with
 * `direct`, a caught-up reader's events are written from `publish` itself (see feed.ts).
 */
export function feedFor(deps: StreamDeps, runId: string, after: number, signal: Departure, opts: { direct?: (e: RunEvent) => boolean; follow?: boolean } = {}) {
  return runFeed({
    registry: deps.registry,
    store: deps.store,
    runId,
    after,
    signal,
    maxQueue: deps.config.SSE_MAX_QUEUE,
    pollMs: deps.config.SSE_POLL_MS,
    onNews: (wake) => deps.news.on(runId, wake),
    follow: opts.follow === false ? undefined : (from) => deps.followers.follow(runId, from),
    direct: opts.direct,
  });
}

/**
 * The final event of a run: at once if it has ended, else when it does (from this process or any other).
 * Null if the run does not exist or `signal` aborts first. Waiting is on the run, never on the provider.
 */
export async function finalOf(deps: StreamDeps & { recent: RecentRuns }, runId: string, signal: AbortSignal): Promise<RunEvent | null> {
  while (!signal.aborted) {
    const found = await findRun(deps, runId);
    if (!found) return null;
    if (!found.live && !isLive(found.row.state)) {
      const mem = found.events?.at(-1);
      if (mem && isTerminalEvent(mem)) return mem;
      const [last] = await deps.store.eventsAfter(runId, found.row.lastSeq - 1, 1);
      return last ?? null;
    }
    // A cursor past any token: the feed skips the tokens and still delivers the final event, whatever its seq.
    // (Should the feed end without it — a reader cut loose — we look again rather than give up.) It reads Postgres
    // itself rather than following: a follower is for readers of the tokens.
    for await (const item of feedFor(deps, runId, FINAL_ONLY, signal, { follow: false })) {
      if (item.kind === 'event' && isTerminalEvent(item.event)) return item.event;
    }
  }
  return null;
}
const FINAL_ONLY = 2 ** 31 - 1;

/**
 * Write a run's events after `after` to an open SSE stream: replay, live, then the final event, then close.
 * A reader too slow to keep up gets `event: resync` with the last id it was sent and is cut loose; it can
 * reconnect from there. Leaving early only detaches this reader: the run goes on.
 */
export async function pipeRun(deps: StreamDeps, sse: SseStream, runId: string, after: number, follow = true): Promise<void> {
  // Caught up and the socket has room: the event's shared frame goes out from `publish` itself.
  const direct = (e: RunEvent) => {
    if (!sse.ready) return false;
    sse.write(nativeFrame(e));
    return true;
  };
  const feed = feedFor(deps, runId, after, sse.gone, { direct, follow });
  for await (const item of feed) {
    if (item.kind === 'resync') {
      await sse.send({ event: 'resync', data: { lastEventId: item.lastEventId, message: 'the reader fell behind; reconnect with Last-Event-ID to resume' } });
      break;
    }
    if (!(await sse.send(nativeFrame(item.event)))) break;
  }
  sse.end();
}

/**
 * The whole stream endpoint for a run whose row the caller has already authorised. A finished run whose
 * final event the client already has gets `204`, which tells EventSource to stop reconnecting.
 */
export async function streamRun(deps: StreamDeps, req: Request, res: Response, found: FoundRun, preamble?: { event: string; data: unknown }): Promise<void> {
  const run = found.row;
  const after = cursorOf(req);
  // (A cursor *past* the log — tokens another process streamed but never persisted — still gets the outcome.)
  if (!found.live && !isLive(run.state) && after === run.lastSeq) {
    res.status(204).end();
    return;
  }
  const sse = openStream(deps, req, res);
  if (preamble) await sse.send(preamble);
  if (found.events && !isLive(run.state)) {
    // A recently finished run whose whole log is in memory: no need to touch Postgres. A cursor past the
    // end (tokens another process never persisted) still gets the final event.
    const tail = found.events.filter((e) => e.seq > after);
    for (const e of tail.length > 0 ? tail : found.events.slice(-1)) {
      if (!(await sse.send(nativeFrame(e)))) break;
    }
    return sse.end();
  }
  // A run that has ended is read from Postgres by this reader alone; a live one is followed if another process drives it.
  pipeDetached(req, deps, sse, run.id, after, Boolean(found.live) || isLive(run.state));
}

/**
 * What routing left on a request that a stream, once open, never reads again: its parameters and `res.locals` (each
 * an object in dictionary mode: Express and the router make them with a null prototype) and the parsed URL the
 * router cached (remade from `req.url` if anything asks: parseurl caches it by `req.url`). Node holds the request
 * for as long as the stream lasts; these were half a kilobyte of it. The request log reads none of them
 * (`originalUrl`, the query — parsed again from the URL — and the headers stay).
 */
function shedRouting(req: Request): void {
  const r = req as unknown as { params?: unknown; _parsedUrl?: unknown };
  r.params = undefined;
  r._parsedUrl = undefined;
  const res = req.res as unknown as { locals?: unknown } | undefined;
  if (res) res.locals = undefined;
}

/**
 * `pipeRun` without the route awaiting it: the handler returns, and the stream goes on by itself, driven by the run's
 * events. An awaited stream kept the whole chain of the request alive for as long as it lasted (Express's router
 * closures, every async frame down to the feed); a stream that waits for hours holds only what it needs. Its
 * failures are its own: logged, and the response ended (its headers are long sent).
 */
export function pipeDetached(req: Request, deps: StreamDeps, sse: SseStream, runId: string, after: number, follow = true): void {
  // Express leaves the router's continuation on the request (`req.next`: each router's `next`, with the context of
  // its whole dispatch, three routers deep): the stream will never call it, and it was a fifth of what an idle
  // stream held. (A failing handler is passed on by the router's own reference, not this one.)
  req.next = undefined;
  shedRouting(req);
  pipeRun(deps, sse, runId, after, follow).catch((err: unknown) => {
    req.log.error({ err, runId }, 'a stream failed');
    sse.end();
  });
}
