import { createHash } from 'node:crypto';
import { isIPv6 } from 'node:net';
import type { Request, RequestHandler, Response } from 'express';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { createRateLimit, sweepExpired, type RateDecision, type RateLimit } from '../limits/rate-limit.js';
import { createStreamSlots } from '../limits/stream-slots.js';
import { bearerToken } from './auth.js';
import { AppError } from './errors.js';
import { isUuid } from './validate.js';

export interface LimitsDeps {
  config: Config;
  db: Db;
  pool: pg.Pool;
  log: Logger;
  /** Told of every 429, by limit name. */
  onLimited?: (limit: string) => void;
}

/**
 * The limits of the API, as small pieces any face can mount: per client IP (demo, session and job creation),
 * per session (requests a minute, streams open at once). All are counted in Postgres, so they hold across
 * every process; each answers `429 rate_limited` in the error envelope with `Retry-After`, and a counted
 * request also carries the IETF draft `RateLimit-*` headers. A limit set to 0 is off (the demo's: closed).
 */
export function createLimits(deps: LimitsDeps) {
  const c = deps.config;
  const rate = (name: string, points: number, windowS: number) => createRateLimit({ pool: deps.pool, name, points, windowS });
  const demo = rate('demo', c.DEMO_RATE_LIMIT, c.DEMO_RATE_WINDOW_S);
  const sessionCreate = c.SESSION_CREATE_RATE_LIMIT > 0 ? rate('session_create', c.SESSION_CREATE_RATE_LIMIT, c.SESSION_CREATE_RATE_WINDOW_S) : null;
  const jobCreate = c.JOB_CREATE_RATE_LIMIT > 0 ? rate('job_create', c.JOB_CREATE_RATE_LIMIT, c.JOB_CREATE_RATE_WINDOW_S) : null;
  const sessionRequests = c.SESSION_RATE_LIMIT_PER_MIN > 0 ? rate('session_requests', c.SESSION_RATE_LIMIT_PER_MIN, 60) : null;
  const slots = createStreamSlots({ db: deps.db, log: deps.log, ttlS: c.STREAM_SLOT_TTL_S });

  const tooMany = (res: Response, limit: string, retryAfterS: number, message: string) => {
    deps.onLimited?.(limit);
    res.setHeader('Retry-After', String(retryAfterS));
    return new AppError(429, 'rate_limited', message, { limit, retryAfterSeconds: retryAfterS });
  };

  async function enforce(limit: RateLimit, key: string, res: Response, message: (d: RateDecision, retryAfterS: number) => string) {
    const d = await limit.hit(key);
    setRateHeaders(res, d);
    const retryAfterS = Math.max(1, Math.ceil(d.resetMs / 1000));
    if (!d.ok) throw tooMany(res, d.name, retryAfterS, message(d, retryAfterS));
  }

  const perIp =
    (limit: RateLimit | null, what: string): RequestHandler =>
    async (req, res, next) => {
      if (limit) await enforce(limit, clientKey(req.ip), res, (d, s) => `at most ${d.limit} ${what} per ${d.windowS} s from one address; try again in ${s} s`);
      next();
    };

  /**
   * Hold one of the key's stream slots for as long as the response is open. The close listener is attached
   * before the slot is taken, so a client that leaves while we wait for Postgres still gives it back.
   */
  const streamSlot =
    (keyOf: (req: Request) => string | undefined, what: string): RequestHandler =>
    async (req, res, next) => {
      const key = c.SESSION_MAX_STREAMS > 0 ? keyOf(req) : undefined;
      if (!key) return next();
      let closed = false;
      let release: (() => void) | null = null;
      res.once('close', () => {
        closed = true;
        release?.();
      });
      release = await slots.acquire(key, c.SESSION_MAX_STREAMS);
      if (!release) {
        throw tooMany(res, 'streams', STREAM_RETRY_AFTER_S, `this ${what} already has ${c.SESSION_MAX_STREAMS} streams open; close one and try again`);
      }
      if (closed) release();
      next();
    };

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

    /** Every request that carries a bearer token counts against its session's budget per minute. */
    sessionRequests: (async (req, res, next) => {
      const token = sessionRequests ? bearerToken(req, true) : undefined;
      if (sessionRequests && token) {
        await enforce(sessionRequests, tokenKey(token), res, (d, s) => `this session may make ${d.limit} requests a minute; try again in ${s} s`);
      }
      next();
    }) as RequestHandler,

    /** A stream of a session (bearer token, header or `?access_token=`): SESSION_MAX_STREAMS open at once. */
    sessionStreams: streamSlot((req) => {
      const token = bearerToken(req, true);
      return token ? `session:${tokenKey(token)}` : undefined;
    }, 'session'),

    /** A stream of a job (`/jobs/:id/stream`): the same number open at once per job. */
    jobStreams: streamSlot((req) => (isUuid(req.params.id) ? `job:${req.params.id}` : undefined), 'job'),

    /** Slots this process holds (tests and the metrics read it). */
    get streamSlotsHeld() {
      return slots.held;
    },

    /** Free the space of ended windows and lapsed slots. */
    async sweep(): Promise<void> {
      await sweepExpired(deps.pool);
      await slots.sweep();
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
export const tokenKey = (token: string) => createHash('sha256').update(token).digest('hex');

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
