import { isIPv6 } from 'node:net';
import type { ErrorRequestHandler, Request, RequestHandler, Response } from 'express';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { createRateLimit, sweepExpired, type RateDecision, type RateLimit } from '../limits/rate-limit.js';
import { createPendingCounts, SESSION_BUDGET_NAME, type BudgetCount, type Counted } from '../limits/session-budget.js';
import { createStreamSlots, slotOutcome } from '../limits/stream-slots.js';
import { bearerToken, hashToken, tokenHashOf } from './auth.js';
import { AppError } from './errors.js';
import { isUuid } from './validate.js';

export interface LimitsDeps {
  config: Config;
  pool: pg.Pool;
  log: Logger;
  /** Told of every 429, by limit name. */
  onLimited?: (limit: string) => void;
}

/** A stream slot a request will take in its first statement (its authentication): see `takeSlot`. */
export interface PendingSlot {
  key: string;
  max: number;
}

/**
 * The limits of the API, as small pieces any face can mount: per client IP (demo, session and job creation),
 * per session (requests a minute, streams open at once). All are counted in Postgres, so they hold across
 * every process; each answers `429 rate_limited` in the error envelope with `Retry-After`, and a counted
 * request also carries the IETF draft `RateLimit-*` headers. A limit set to 0 is off (the demo's: closed).
 *
 * A session's request count and stream slot cost no statement of their own on the routes that authenticate a
 * session (every `/v1` route, and `/api` under `/sessions/:id` and `/runs`): the middleware leaves them pending
 * and the authentication (or the accept) takes them into its own statement (limits/session-budget.ts,
 * limits/stream-slots.ts). Everywhere else they are counted as before, by a statement first.
 */
export function createLimits(deps: LimitsDeps) {
  const c = deps.config;
  const rate = (name: string, points: number, windowS: number) => createRateLimit({ pool: deps.pool, name, points, windowS });
  const demo = rate('demo', c.DEMO_RATE_LIMIT, c.DEMO_RATE_WINDOW_S);
  const sessionCreate = c.SESSION_CREATE_RATE_LIMIT > 0 ? rate('session_create', c.SESSION_CREATE_RATE_LIMIT, c.SESSION_CREATE_RATE_WINDOW_S) : null;
  const jobCreate = c.JOB_CREATE_RATE_LIMIT > 0 ? rate('job_create', c.JOB_CREATE_RATE_LIMIT, c.JOB_CREATE_RATE_WINDOW_S) : null;
  const sessionRequests = c.SESSION_RATE_LIMIT_PER_MIN > 0 ? rate(SESSION_BUDGET_NAME, c.SESSION_RATE_LIMIT_PER_MIN, 60) : null;
  const slots = createStreamSlots({ pool: deps.pool, log: deps.log, ttlS: c.STREAM_SLOT_TTL_S });
  const pending = createPendingCounts();
  const pendingSlots = new WeakMap<Request, PendingSlot>();
  /** Session budgets found spent, until their window ends: refused from memory, no statement (as the library does). */
  const spent = new Map<string, number>();

  const tooMany = (res: Response, limit: string, retryAfterS: number, message: string) => {
    deps.onLimited?.(limit);
    res.setHeader('Retry-After', String(retryAfterS));
    return new AppError(429, 'rate_limited', message, { limit, retryAfterSeconds: retryAfterS });
  };

  const budgetMessage = (d: RateDecision, s: number) => `this session may make ${d.limit} requests a minute; try again in ${s} s`;

  /** Headers for a decision, and the 429 if it refuses. */
  function decide(res: Response, d: RateDecision, message: (d: RateDecision, retryAfterS: number) => string) {
    setRateHeaders(res, d);
    const retryAfterS = Math.max(1, Math.ceil(d.resetMs / 1000));
    if (!d.ok) throw tooMany(res, d.name, retryAfterS, message(d, retryAfterS));
  }

  async function enforce(limit: RateLimit, key: string, res: Response, message: (d: RateDecision, retryAfterS: number) => string) {
    decide(res, await limit.hit(key), message);
  }

  /** A session's budget count made by a statement of its own (the request made none that could carry it). */
  async function countNow(count: BudgetCount, res: Response) {
    const d = await sessionRequests!.hit(count.key.slice(SESSION_BUDGET_NAME.length + 1));
    if (!d.ok) spent.set(count.key, Date.now() + d.resetMs);
    decide(res, d, budgetMessage);
  }

  const perIp =
    (limit: RateLimit | null, what: string): RequestHandler =>
    async (req, res, next) => {
      if (limit) await enforce(limit, clientKey(req.ip), res, (d, s) => `at most ${d.limit} ${what} per ${d.windowS} s from one address; try again in ${s} s`);
      next();
    };

  /** Routes whose first statement authenticates a session, and so takes the request's count and slot into it. */
  const folds = (req: Request) => req.baseUrl === '/v1' || /^\/(sessions\/[^/]+|runs|ws)(\/|$)/.test(req.path);

  /**
   * Hold one of the key's stream slots for as long as the response is open. The close listener is attached
   * before the slot is taken, so a client that leaves while we wait for Postgres still gives it back.
   */
  async function holdSlot(req: Request, res: Response, key: string, what: string, take: () => Promise<(() => void) | null>) {
    let closed = false;
    let release: (() => void) | null = null;
    res.once('close', () => {
      closed = true;
      release?.();
    });
    release = await take();
    if (!release) throw tooMany(res, 'streams', STREAM_RETRY_AFTER_S, `this ${what} already has ${c.SESSION_MAX_STREAMS} streams open; close one and try again`);
    // The client may have gone while we waited for Postgres: 'close' has then fired already.
    if (closed || res.closed || req.socket.destroyed) release();
  }

  return {
    /** `POST /api/sessions`: sessions created per client IP per window. */
    sessionCreate: perIp(sessionCreate, 'sessions'),
    /** `POST /api/jobs`: jobs created per client IP per window. */
    jobCreate: perIp(jobCreate, 'jobs'),

    /** The demo, after its input is validated (a 400 costs nothing): DEMO_RATE_LIMIT per client IP per window. */
    async demo(req: Request, res: Response): Promise<void> {
      await enforce(demo, clientKey(req.ip), res, (d, s) =>
        d.limit === 0 ? 'the demo is turned off on this server' : `the demo allows ${d.limit} requests per ${d.windowS} s; try again in ${s} s`,
      );
    },

    /**
     * Every request that carries a bearer token counts against its session's budget per minute: pending on the
     * routes that fold it into their first statement, counted here on the others. A budget found spent is
     * refused from memory until its window ends.
     */
    sessionRequests: (async (req, res, next) => {
      const token = sessionRequests ? bearerToken(req, true) : undefined;
      if (!sessionRequests || !token) return next();
      const count: BudgetCount = { key: `${SESSION_BUDGET_NAME}:${tokenHashOf(req, token)}`, limit: c.SESSION_RATE_LIMIT_PER_MIN, windowMs: 60_000 };
      const until = spent.get(count.key);
      if (until !== undefined && until > Date.now()) {
        const resetMs = until - Date.now();
        decide(res, { ok: false, name: SESSION_BUDGET_NAME, limit: count.limit, windowS: 60, remaining: 0, resetMs }, budgetMessage);
      }
      if (until !== undefined) spent.delete(count.key);
      if (!folds(req)) {
        await countNow(count, res);
        return next();
      }
      pending.defer(req, count);
      // A success that made no statement to carry the count (nothing should) is counted as it leaves.
      res.once('finish', () => {
        const left = pending.take(req);
        if (left) sessionRequests.hit(left.key.slice(SESSION_BUDGET_NAME.length + 1)).catch(() => undefined);
      });
      next();
    }) as RequestHandler,

    /**
     * Before an error is answered: a request that never reached a statement (a bad body, no token, a 404) is counted
     * now, and answered 429 instead if its session's budget is spent — as it was when the count came first.
     */
    countBeforeError: (async (err, req, res, next) => {
      const count = pending.take(req);
      if (!count || res.headersSent) return next(err);
      try {
        await countNow(count, res);
      } catch (limited) {
        return next(limited);
      }
      next(err);
    }) as ErrorRequestHandler,

    /** The request's pending budget count, for the statement about to run (once: whoever takes it counts it). */
    takeCount: (req: Request | undefined) => pending.take(req),
    /** Put back a count taken for a statement that never ran: the next statement (or the error path) counts it. */
    restoreCount: (req: Request, count: BudgetCount) => pending.defer(req, count),

    /** A count made inside a statement: the headers, and the 429 (after which the statement did nothing else). */
    settleCount(res: Response, count: BudgetCount, counted: Counted) {
      const resetMs = Math.max(0, counted.expire - Date.now());
      const ok = counted.points <= count.limit;
      if (!ok) spent.set(count.key, counted.expire);
      decide(res, { ok, name: SESSION_BUDGET_NAME, limit: count.limit, windowS: count.windowMs / 1000, remaining: Math.max(0, count.limit - counted.points), resetMs }, budgetMessage);
    },

    /** A stream of a session (bearer token, header or `?access_token=`): SESSION_MAX_STREAMS open at once, taken by its authentication. */
    sessionStreams: ((req, _res, next) => {
      const token = c.SESSION_MAX_STREAMS > 0 ? bearerToken(req, true) : undefined;
      if (token) pendingSlots.set(req, { key: `session:${tokenHashOf(req, token)}`, max: c.SESSION_MAX_STREAMS });
      next();
    }) as RequestHandler,

    /**
     * A WebSocket that authenticates by its first message (its upgrade carried no token): the count and the stream
     * slot an SSE stream's request takes, left pending for that authentication's statement. The slot is held until
     * the upgrade's response — bound to the socket — closes.
     */
    pendSocket(req: Request, token: string) {
      const hash = tokenHashOf(req, token);
      if (sessionRequests) pending.defer(req, { key: `${SESSION_BUDGET_NAME}:${hash}`, limit: c.SESSION_RATE_LIMIT_PER_MIN, windowMs: 60_000 });
      if (c.SESSION_MAX_STREAMS > 0) pendingSlots.set(req, { key: `session:${hash}`, max: c.SESSION_MAX_STREAMS });
    },

    /**
     * A socket message that does work (subscribe, stop) is a request of its session: counted against its budget (a
     * statement of its own; a budget found spent is refused from memory). Throws the `429 rate_limited` it would get.
     */
    async countMessage(tokenHash: string): Promise<void> {
      if (!sessionRequests) return;
      const key = `${SESSION_BUDGET_NAME}:${tokenHash}`;
      const until = spent.get(key);
      const d =
        until !== undefined && until > Date.now()
          ? { ok: false, limit: c.SESSION_RATE_LIMIT_PER_MIN, resetMs: until - Date.now() }
          : await sessionRequests.hit(tokenHash);
      if (d.ok) return;
      if (until === undefined || until <= Date.now()) spent.set(key, Date.now() + d.resetMs);
      const s = Math.max(1, Math.ceil(d.resetMs / 1000));
      deps.onLimited?.(SESSION_BUDGET_NAME);
      throw new AppError(429, 'rate_limited', budgetMessage({ limit: d.limit } as RateDecision, s), { limit: SESSION_BUDGET_NAME, retryAfterSeconds: s });
    },

    /** The request's pending stream slot (once), for its authentication's statement. */
    takeSlot(req: Request | undefined): PendingSlot | undefined {
      if (!req) return undefined;
      const slot = pendingSlots.get(req);
      if (slot) pendingSlots.delete(req);
      return slot;
    },

    /** The parameters of a slot taken in a statement (`slotSql`). */
    slotValues: (slot: PendingSlot, id: string) => slots.values(slot.key, slot.max, id),

    /** Give back at once a slot a statement took for a request that is refused for another reason. */
    dropSlot(slotId: string | null) {
      if (slotId) slots.adopt(slotId)();
    },

    /**
     * The outcome of a slot tried inside a statement: held until the response closes, a 429 when the key is full,
     * or another try of its own when a racing taker got the number first.
     */
    async settleSlot(req: Request, res: Response, slot: PendingSlot, slotId: string | null, live: number): Promise<void> {
      const outcome = slotOutcome(slotId, live, slot.max);
      await holdSlot(req, res, slot.key, 'session', async () =>
        outcome === 'taken' ? slots.adopt(slotId!) : outcome === 'full' ? null : slots.acquire(slot.key, slot.max),
      );
    },

    /** A stream of a job (`/jobs/:id/stream`): the same number open at once per job (a statement of its own). */
    jobStreams: (async (req, res, next) => {
      // Lower-cased: Postgres finds the job by its id in any case, so each spelling must not get slots of its own.
      const key = c.SESSION_MAX_STREAMS > 0 && isUuid(req.params.id) ? `job:${req.params.id.toLowerCase()}` : undefined;
      if (key) await holdSlot(req, res, key, 'job', () => slots.acquire(key, c.SESSION_MAX_STREAMS));
      next();
    }) as RequestHandler,

    /** Slots this process holds (tests and the metrics read it). */
    get streamSlotsHeld() {
      return slots.held;
    },

    /** Shutdown, once the streams are closed and before the pool ends: give back every stream slot held here. */
    close: () => slots.close(),

    /** Free the space of ended windows and lapsed slots. */
    async sweep(): Promise<void> {
      await sweepExpired(deps.pool);
      await slots.sweep();
      const now = Date.now();
      for (const [key, until] of spent) if (until <= now) spent.delete(key);
    },
  };
}

export type Limits = ReturnType<typeof createLimits>;

/** A concurrency limit has no window to wait for: try again shortly (a stream is being closed, or lapses). */
const STREAM_RETRY_AFTER_S = 5;

/** `RateLimit-*` headers (IETF draft, as express-rate-limit's draft-6): the tightest limit of a request wins. */
function setRateHeaders(res: Response, d: RateDecision) {
  const current = res.getHeader('RateLimit-Remaining');
  if (current !== undefined && Number(current) < d.remaining) return;
  res.setHeader('RateLimit-Policy', `${d.limit};w=${d.windowS}`);
  res.setHeader('RateLimit-Limit', String(d.limit));
  res.setHeader('RateLimit-Remaining', String(d.remaining));
  res.setHeader('RateLimit-Reset', String(Math.ceil(d.resetMs / 1000)));
}

/** A session's limit key: the SHA-256 of its bearer token (one token per session; never the token itself). */
export const tokenKey = hashToken;

/**
 * A client's limit key: its IPv4 address, or the /64 network of an IPv6 one (a host gets a whole /64, so
 * counting single IPv6 addresses would let one client rotate through billions of keys).
 */
export function clientKey(ip: string | undefined): string {
  if (!ip) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (!isIPv6(ip)) return ip;
  const [head = '', tail = ''] = ip.split('%')[0]!.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.toLowerCase().replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
