import type { Request } from 'express';
import type { Logger } from 'pino';
import type { RawData } from 'ws';
import { isDatabaseUnavailable } from '../db/errors.js';
import { AppError, DATABASE_RETRY_AFTER_S, badRequest, notFound } from '../http/errors.js';
import { CLOSE, type Peer } from '../http/ws.js';
import { stopRun, type ControlDeps } from './control.js';
import { findRun } from './lookup.js';
import type { RecentRuns } from './recent.js';
import { isTerminalEvent, type RunEvent } from './registry.js';
import type { SessionNotices } from './session-notices.js';
import { CLIENT_TYPES, schemaOf, type ClientMessage } from './socket-messages.js';
import { isLive } from './store.js';
import { feedFor, type StreamDeps } from './stream.js';

/** Who a socket speaks for, once authenticated. */
export interface SocketSession {
  sessionId: string;
  /** The token's hash: the key its messages are counted under. */
  tokenHash: string;
}

export interface SocketDeps extends StreamDeps, ControlDeps {
  recent: RecentRuns;
  notices: SessionNotices;
  log: Logger;
  /** Authenticate a token sent in the first message (its budget count and stream slot taken as a stream's are). */
  authenticate(token: string, req: Request): Promise<SocketSession>;
  /** Count a message that does work against the session's budget; throws its `429`. */
  countMessage(tokenHash: string): Promise<void>;
}

/** One subscription to a run: aborting it ends its feed (and detaches it from the registry). */
interface Subscription {
  readonly abort: AbortController;
  /** The seq of the last event written to the socket. */
  last: number;
}

const WS = Symbol('sluice.ws');
type WithMessage = RunEvent & { [WS]?: Buffer };
/** Messages read but not yet handled, before the socket stops reading. */
const MAX_PENDING = 32;

/**
 * The `event` message of a run's event, serialised once per event and shared, as bytes, by every socket that sends
 * it: kept on the event, as frames.ts keeps the SSE frame (only the bytes: `ws` writes a Buffer as it is). Its `data`
 * is the SSE event's `data`, byte for byte. (`runId` is a UUID: nothing in it needs escaping.)
 */
export function eventMessage(runId: string, e: RunEvent): Buffer {
  return ((e as WithMessage)[WS] ??= Buffer.from(`{"type":"event","runId":"${runId}","seq":${e.seq},"event":${JSON.stringify(e.type)},"data":${JSON.stringify(e.data)}}`));
}

/**
 * The WebSocket protocol of one socket (README: "WebSocket"): any number of run subscriptions, each with the
 * guarantees of an SSE stream, and the session's notices, over one connection.
 *
 * Why it cannot race. Messages are handled one at a time, in the order they came (a promise chain): a `subscribe`
 * is in place — or refused — before the next message is read, so `unsubscribe` right after `subscribe` always finds
 * it. Each subscription is a `runFeed` of its own (feed.ts: attach first, read second; every event exactly once, in
 * order), with its own abort; the socket is only its writer. A caught-up subscription's events are written from
 * `publish` itself (the feed's direct path) while the socket is not behind; once it is (more than
 * WS_MAX_BUFFERED_BYTES unread), the feed queues the event instead, and the subscription's loop — finding the
 * socket behind — sends `resync` with the last seq it wrote and ends. So a subscription that lost an event always
 * says so, with the seq to resume after; one that did not fall behind is untouched. Replays are written paced
 * (Peer.sendPaced), so they never push a socket behind by themselves. A socket closing aborts every feed: it only
 * detaches, as closing an SSE stream does.
 */
export function serveSocket(deps: SocketDeps, peer: Peer, req: Request, preauthenticated: SocketSession | null): void {
  const c = deps.config;
  const subs = new Map<string, Subscription>();
  let session: SocketSession | null = null;
  let offNotices: (() => void) | null = null;
  let chain = Promise.resolve();
  let closed = false;

  const send = (m: Record<string, unknown>) => peer.send(JSON.stringify(m));
  const refuse = (err: unknown, runId?: string) => {
    let e: AppError;
    if (err instanceof AppError) e = err;
    else if (isDatabaseUnavailable(err)) e = new AppError(503, 'database_unavailable', 'the database is not reachable; try again shortly', { retryAfterSeconds: DATABASE_RETRY_AFTER_S });
    else {
      deps.log.error({ err, runId }, 'a WebSocket message failed');
      e = new AppError(500, 'internal', 'internal server error');
    }
    send({ type: 'error', code: e.code, message: e.message, ...(runId ? { runId } : {}), ...(e.details !== undefined ? { details: e.details } : {}) });
    return e;
  };

  function authenticated(s: SocketSession) {
    session = s;
    clearTimeout(authTimer);
    send({ type: 'authenticated', sessionId: s.sessionId, maxSubscriptions: c.WS_MAX_SUBSCRIPTIONS });
  }

  const authTimer = setTimeout(() => {
    if (session || closed) return;
    send({ type: 'error', code: 'unauthorized', message: `authenticate within ${c.WS_AUTH_TIMEOUT_MS} ms: send {"type":"auth","token":"<session token>"} first` });
    peer.close(CLOSE.policy, 'authentication timeout');
  }, c.WS_AUTH_TIMEOUT_MS);
  if (preauthenticated) authenticated(preauthenticated);

  // Messages wait their turn here; past MAX_PENDING the socket stops reading, so a client that sends faster than it
  // is answered is held back by TCP rather than by our memory (beyond the rest of the chunk `ws` has already read).
  let pending = 0;
  peer.ws.on('message', (data: RawData, isBinary: boolean) => {
    const text = isBinary ? null : data.toString();
    if (++pending >= MAX_PENDING) peer.ws.pause();
    chain = chain
      // A client that keeps sending but reads nothing (its answers pile up past twice WS_MAX_BUFFERED_BYTES) is cut:
      // dropped, not closed — it would never read a close frame, and `ws` waits 30 s for the closing handshake, its
      // subscriptions attached. Checked as each message is about to be answered, not as it comes in: `ws` emits every
      // message of a chunk it has read (up to 64 KiB of them) before pausing takes effect, all before the first answer.
      .then(() => (closed ? undefined : peer.flooded ? peer.ws.terminate() : handle(text)))
      .catch((err: unknown) => void refuse(err))
      .finally(() => {
        if (--pending < MAX_PENDING && peer.ws.isPaused) peer.ws.resume();
      });
  });
  // Protocol errors (a bad frame, a message over WS_MAX_MESSAGE_BYTES): `ws` closes the socket with the right code.
  peer.ws.on('error', (err) => deps.log.debug({ err }, 'WebSocket protocol error'));
  peer.ws.once('close', () => {
    closed = true;
    clearTimeout(authTimer);
    for (const sub of subs.values()) sub.abort.abort();
    subs.clear();
    offNotices?.();
  });
  // Listening now: whatever the client sent with its handshake is read from here on.
  peer.listen();

  /** Parse one message: JSON, a known type, the fields its type needs. Throws the 400 a body would get. */
  function parse(text: string | null): ClientMessage {
    if (text === null) throw badRequest('messages are JSON text frames, not binary');
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new AppError(400, 'invalid_json', 'the message is not valid JSON');
    }
    const type = (raw as { type?: unknown } | null)?.type;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new AppError(400, 'invalid_json', 'a message is a JSON object');
    if (!CLIENT_TYPES.includes(type as never)) throw badRequest(`type must be one of ${CLIENT_TYPES.join(', ')}`, [{ path: 'type', message: `got ${JSON.stringify(type)}`, code: 'invalid_value' }]);
    const parsed = schemaOf(type as (typeof CLIENT_TYPES)[number], raw).safeParse(raw);
    // A run id in any case names the run (Postgres compares UUIDs so), but only its canonical form — lower case, as
    // the API writes it — is its key in memory: the registry's entry, a subscription, the stop of the run here.
    if (parsed.success) return 'runId' in parsed.data ? { ...parsed.data, runId: parsed.data.runId.toLowerCase() } : parsed.data;
    const details = parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message, code: i.code }));
    const first = details.find((d) => d.path !== 'type' && d.path !== '') ?? details[0];
    throw badRequest(`invalid ${String(type)} message${first ? `: ${first.path ? `${first.path}: ` : ''}${first.message}` : ''}`, details);
  }

  async function handle(text: string | null): Promise<void> {
    let msg: ClientMessage;
    try {
      msg = parse(text);
    } catch (err) {
      refuse(err);
      return;
    }
    const runId = 'runId' in msg ? msg.runId : undefined;
    try {
      if (msg.type === 'auth') return await auth(msg.token);
      if (!session) throw new AppError(401, 'unauthorized', 'authenticate first: {"type":"auth","token":"<session token>"}');
      if (msg.type === 'subscribe') return 'session' in msg ? subscribeSession() : await subscribe(session, msg.runId, msg.after ?? 0);
      if (msg.type === 'unsubscribe') return unsubscribe(runId);
      return await stop(session, msg.runId);
    } catch (err) {
      refuse(err, runId);
    }
  }

  async function auth(token: string) {
    if (session) throw badRequest('this socket is already authenticated');
    try {
      authenticated(await deps.authenticate(token, req));
    } catch (err) {
      const e = refuse(err);
      // A refused authentication ends the socket: 4000 + the HTTP status (4401, 4429); the database down is weather.
      if (e.status === 401 || e.status === 429) peer.close(e.status === 401 ? CLOSE.unauthorized : CLOSE.limited, e.code);
    }
  }

  /** A run of this session, or the `not_found` a missing run gets (another session's run is the same answer). */
  async function ownRun(s: SocketSession, runId: string) {
    const found = await findRun(deps, runId);
    if (!found || found.row.kind !== 'session' || found.row.sessionId !== s.sessionId) throw notFound('run');
    return found;
  }

  async function subscribe(s: SocketSession, runId: string, after: number) {
    if (subs.has(runId)) throw badRequest('this socket is already subscribed to that run; unsubscribe first to start again from another point');
    if (subs.size >= c.WS_MAX_SUBSCRIPTIONS) {
      throw new AppError(429, 'too_many_streams', `at most ${c.WS_MAX_SUBSCRIPTIONS} subscriptions may be open on one socket; unsubscribe from one first`, { limit: c.WS_MAX_SUBSCRIPTIONS });
    }
    const sub: Subscription = { abort: new AbortController(), last: after };
    // Held from now, so the cap counts it while we read Postgres.
    subs.set(runId, sub);
    try {
      await deps.countMessage(s.tokenHash);
      const found = await ownRun(s, runId);
      if (closed || sub.abort.signal.aborted) return;
      const state = found.live?.state ?? found.row.state;
      send({ type: 'subscribed', runId, state });
      void pipe(runId, sub, after, found).catch((err: unknown) => {
        deps.log.error({ err, runId }, 'a WebSocket subscription failed');
        if (subs.get(runId) === sub) subs.delete(runId);
        send({ type: 'error', code: 'internal', message: 'the subscription failed; subscribe again', runId });
      });
    } catch (err) {
      if (subs.get(runId) === sub) subs.delete(runId);
      throw err;
    }
  }

  /** Write a run's events after `after` to the socket: replay, live, the final event; or `resync` if the socket fell behind. */
  async function pipe(runId: string, sub: Subscription, after: number, found: Awaited<ReturnType<typeof ownRun>>) {
    const signal = sub.abort.signal;
    let ended = false;
    /** Tell the subscriber where to resume (the socket is behind): its subscription ends here. */
    const resync = () => {
      send({ type: 'resync', runId, lastSeq: sub.last });
      ended = true;
    };
    try {
      if (!found.live && !isLive(found.row.state) && after === found.row.lastSeq) return;
      if (found.events && !isLive(found.row.state)) {
        // A recently finished run whose whole log is in memory (a cursor past its end still gets the final event).
        const tail = found.events.filter((e) => e.seq > after);
        for (const e of tail.length > 0 ? tail : found.events.slice(-1)) {
          if (signal.aborted) return;
          // As the feed below: a socket behind is told where to resume, not written more (a client that subscribes
          // over and over without reading would otherwise stack one paced write per subscription).
          if (peer.behind) return resync();
          if (!(await peer.sendPaced(eventMessage(runId, e)))) return;
          sub.last = e.seq;
          ended = isTerminalEvent(e);
        }
        return;
      }
      // Caught up and the socket not behind: the shared message goes out from `publish` itself.
      const direct = (e: RunEvent) => {
        if (signal.aborted || !peer.open || peer.behind) return false;
        peer.sendEvent(eventMessage(runId, e));
        sub.last = e.seq;
        return true;
      };
      const follow = Boolean(found.live) || isLive(found.row.state);
      for await (const item of feedFor(deps, runId, after, signal, { direct, follow })) {
        // Unsubscribed (or the socket closed) while this item was on its way: nothing after `unsubscribed`.
        if (signal.aborted) return;
        if (item.kind === 'resync' || peer.behind) return resync();
        if (!(await peer.sendPaced(eventMessage(runId, item.event)))) return;
        sub.last = item.event.seq;
        if (isTerminalEvent(item.event)) {
          ended = true;
          return;
        }
      }
    } finally {
      if (subs.get(runId) === sub) {
        subs.delete(runId);
        // Ended without a final event or a resync (nothing after the cursor, the run deleted): say the subscription is over.
        if (!ended && !signal.aborted && peer.open) send({ type: 'unsubscribed', runId });
      }
    }
  }

  function unsubscribe(runId: string | undefined) {
    if (runId === undefined) {
      offNotices?.();
      offNotices = null;
      return send({ type: 'unsubscribed', session: true });
    }
    const sub = subs.get(runId);
    subs.delete(runId);
    sub?.abort.abort();
    send({ type: 'unsubscribed', runId });
  }

  function subscribeSession() {
    const s = session!;
    if (!offNotices) {
      offNotices = deps.notices.on(s.sessionId, (n) => {
        // Notices are small; a socket too far behind for them loses them too, and is told so.
        if (peer.behind) {
          offNotices?.();
          offNotices = null;
          return send({ type: 'resync', session: true, lastSeq: 0 });
        }
        send({ type: 'run', runId: n.runId, state: n.state });
      });
    }
    send({ type: 'subscribed', session: true });
  }

  async function stop(s: SocketSession, runId: string) {
    await deps.countMessage(s.tokenHash);
    const found = await ownRun(s, runId);
    const state = found.live?.state ?? found.row.state;
    if (!isLive(state)) return send({ type: 'stopping', runId, state });
    if (await stopRun(deps, runId)) return send({ type: 'stopping', runId, state: 'cancelling' });
    // It ended between our read and the stop.
    const now = await findRun(deps, runId);
    send({ type: 'stopping', runId, state: now?.live?.state ?? now?.row.state ?? state });
  }
}
