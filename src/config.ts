import proxyaddr from 'proxy-addr';
import { z } from 'zod';
import { LIGHTNING_NETWORKS } from './providers/payments/bolt11.js';

/**
 * The environment, parsed once. Every variable here is listed in `.env.example` with its default;
 * a bad value stops start-up with a message that names each bad field (see `loadConfig`).
 */
/**
 * Every duration has a ceiling, so an accepted value cannot break the process later. A Node timer longer than 2^31 − 1
 * ms (24.8 days) fires after 1 ms instead, so an interval set from a huge value spins (the sweeper, SSE pings, lease
 * renewals): each variable that becomes a timer is capped well below that. A duration that ends in date arithmetic
 * (an expiry, a retention cut-off) is capped at a century, where every date is still valid.
 */
const HOURS_MAX = 100 * 365 * 24;
const int = (def: number, min = 0, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int().min(min).max(max).default(def);
const bool = (def: boolean) =>
  z
    .enum(['true', 'false', '1', '0', 'yes', 'no'])
    .default(def ? 'true' : 'false')
    .transform((v) => v === 'true' || v === '1' || v === 'yes');

/** A comma-separated list of origins (`scheme://host[:port]`, no path), or `*`. */
const origins = z
  .string()
  .default('')
  .transform((v) => v.split(',').map((o) => o.trim().replace(/\/+$/, '')).filter(Boolean))
  .pipe(
    z.array(
      z.string().refine((o) => o === '*' || /^https?:\/\/[^/\s?#]+$/i.test(o), {
        error: (i) => `${JSON.stringify(i.input)} is not an origin like https://app.example.com (scheme, host and port only), or *`,
      }),
    ),
  );

export const configSchema = z
  .object({
    NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
    /** HTTP port of the API. */
    PORT: int(3000, 0, 65535),
    /** Interface the API listens on. */
    HOST: z.string().min(1).default('0.0.0.0'),
    /** pino level. */
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /**
     * Express `trust proxy`, for the client IP behind a reverse proxy (demo rate limit, streams per client): `false`
     * (default: the socket's address), a hop count (`1`: one proxy in front), or the proxies' addresses, subnets or
     * presets (`loopback`, `10.0.0.0/8, fc00::/7`). `true` trusts every hop, so any client can name its own IP.
     */
    TRUST_PROXY: z
      .string()
      .default('false')
      .transform((v, ctx): boolean | number | string => {
        const t = v.trim();
        if (/^(true|false)$/i.test(t)) return t.toLowerCase() === 'true';
        if (/^\d+$/.test(t)) return Number(t);
        try {
          proxyaddr.compile(t.split(',').map((x) => x.trim()));
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: `must be true, false, a hop count, or addresses/subnets: ${(err as Error).message}` });
          return z.NEVER;
        }
        return t;
      }),
    /** HTTP: time to receive a request's headers, and the whole request; connections held at once (default: from the file limit). */
    HTTP_HEADERS_TIMEOUT_MS: int(10_000, 100, 600_000),
    HTTP_REQUEST_TIMEOUT_MS: int(30_000, 100, 3_600_000),
    MAX_CONNECTIONS: int(0, 0, 1_000_000),
    /** `pretty`: coloured one-line logs (pino-pretty); `json`: one JSON object a line; `auto`: pretty on a terminal. */
    LOG_FORMAT: z.enum(['auto', 'pretty', 'json']).default('auto'),
    /** Origins (comma-separated, e.g. `https://app.example.com`) whose pages may call the API; `*` for any; none by default. */
    CORS_ORIGINS: origins,
    /** When set, `GET /metrics` asks for `Authorization: Bearer <METRICS_TOKEN>`; unset, it is open. */
    METRICS_TOKEN: z.string().min(1).optional(),

    /** Use this Postgres instead of the embedded one. */
    DATABASE_URL: z.string().url().optional(),
    /** Where the embedded Postgres keeps its cluster (only without DATABASE_URL). */
    DATA_DIR: z.string().min(1).default('./.data'),
    /** Port of the embedded Postgres. */
    EMBEDDED_PG_PORT: int(54329, 1, 65535),
    /** Connections in the pool. */
    DB_POOL_MAX: int(10, 1, 200),
    /** How long a query waits for a database connection before it fails (503 to HTTP) instead of hanging. */
    DB_CONNECT_TIMEOUT_MS: int(5_000, 100, 600_000),

    /** Session deposit / top-up limits, in sats. */
    SESSION_MIN_SATS: int(100, 1),
    SESSION_MAX_SATS: int(10_000, 1),
    /** A session expires after this many hours without use. */
    SESSION_EXPIRY_HOURS: z.coerce.number().positive().max(HOURS_MAX).default(24),
    /** Longest session request text, in characters. */
    REQUEST_MAX_CHARS: int(8_000, 1),
    /** `max_tokens` when a request names none, and the highest it may name. */
    DEFAULT_MAX_TOKENS: int(256, 1),
    MAX_TOKENS_LIMIT: int(4_096, 1),

    /** Prices: sats per 1000 input / output tokens, and the least a request costs. */
    PRICE_INPUT_SATS_PER_1K: z.coerce.number().min(0).default(10),
    PRICE_OUTPUT_SATS_PER_1K: z.coerce.number().min(0).default(40),
    MIN_REQUEST_SATS: int(1, 0),

    /**
     * The model catalogue (see src/models/catalogue.ts): a path to its JSON, or the JSON inline. Neither: the
     * stub alone, as `sluice-stub`, priced from PRICE_* and capped at MAX_TOKENS_LIMIT.
     */
    MODELS_FILE: z.string().min(1).optional(),
    MODELS: z.string().min(1).optional(),
    /**
     * Real AI providers (openai-compatible, anthropic; never the stub): a run fails `provider_timeout` and is
     * refunded when its first token takes longer than this (retries included), or when the provider then goes
     * silent for longer than AI_IDLE_TIMEOUT_MS. A catalogue entry may set its own (`firstTokenTimeoutMs`,
     * `idleTimeoutMs`): reasoning models can think for minutes before their first token.
     */
    AI_FIRST_TOKEN_TIMEOUT_MS: int(120_000, 100, 3_600_000),
    AI_IDLE_TIMEOUT_MS: int(30_000, 100, 3_600_000),
    /** Attempts after the first when a real provider fails before its first token (429, 5xx, connection errors). */
    AI_MAX_RETRIES: int(2, 0, 10),
    /** The first wait between attempts when the provider names none (doubling, at most 8 s); `retry-after` wins. */
    AI_RETRY_BASE_MS: int(500, 0, 60_000),
    /** Which payment provider to use: the stub node, or LNbits. */
    PAYMENT_PROVIDER: z.enum(['stub', 'lnbits']).default('stub'),
    /**
     * The Lightning network our invoices are on and refund invoices must be for. Default: `regtest` with the
     * stub (its invoices are `lnbcrt…`), `bitcoin` with LNbits.
     */
    LIGHTNING_NETWORK: z.enum(LIGHTNING_NETWORKS).optional(),
    /** Every invoice we issue expires after this many seconds (LNbits's own default is 3600). */
    INVOICE_EXPIRY_S: int(3_600, 1, 30 * 86_400),
    /** An unpaid invoice is closed (and what waited on it expired) this long after its expiry, once the provider says it is unpaid. */
    INVOICE_EXPIRY_GRACE_S: int(30, 0, 3_600),
    /** A refund payout that fails is tried this many times in all, the waits doubling from REFUND_RETRY_BASE_S (capped at an hour). */
    REFUND_MAX_ATTEMPTS: int(5, 1, 100),
    REFUND_RETRY_BASE_S: z.coerce.number().positive().max(3_600).default(30),
    /** LNbits (PAYMENT_PROVIDER=lnbits): base URL, the wallet's invoice key (receive) and admin key (pay refunds). */
    LNBITS_URL: z.string().url().optional(),
    LNBITS_INVOICE_KEY: z.string().min(1).optional(),
    LNBITS_ADMIN_KEY: z.string().min(1).optional(),
    /** Where LNbits should POST when an invoice is paid (our `/api/webhooks/lnbits`, as LNbits reaches it). Unset: polling only. */
    LNBITS_WEBHOOK_URL: z.string().url().optional(),
    /** Longest wait for one LNbits call; a payment still unanswered then has an unknown outcome and is looked up later. */
    LNBITS_TIMEOUT_MS: int(30_000, 100, 600_000),
    /** Stub AI: delay between tokens and default reply length (directives in the text override both). */
    STUB_TOKEN_DELAY_MS: int(50, 0, 60_000),
    STUB_OUTPUT_TOKENS: int(24, 0, 100_000),

    /**
     * What this process does (README "Scaling"): `all` (default) accepts, streams and executes, starting a run it
     * accepts at once when it has a free slot; `api` accepts and streams and executes nothing (every run goes to the
     * queue); `worker` claims runs from the queue and executes them, and serves only `/api/healthz` and `/metrics`.
     */
    PROCESS_ROLE: z.enum(['all', 'api', 'worker']).default('all'),
    /** Runs executing at once in this process (`all` and `worker`); the rest wait in the shared queue. Default 32. */
    WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(10_000).optional(),
    /** The former name of WORKER_CONCURRENCY (still read; WORKER_CONCURRENCY wins). */
    MAX_CONCURRENT_RUNS: int(32, 1, 10_000),
    /**
     * The most runs of one session (or job) executing at once across the fleet: the queue skips its runs past this,
     * so one session cannot take every worker while others wait. 0: no cap.
     */
    SESSION_MAX_CONCURRENT_RUNS: int(16, 0, 100_000),
    /**
     * How often a process with free slots looks at the queue even if no NOTIFY woke it (a lost notification costs
     * at most this), and how often an accepting process recounts the queue for MAX_QUEUED_RUNS.
     */
    QUEUE_POLL_MS: int(1_000, 10, 60_000),
    /**
     * Runs waiting in the shared queue (for a slot, or for an earlier turn of their conversation) before a new
     * request is refused `503 overloaded` with `Retry-After`, before any money moves. Each accepting process counts
     * the queue every QUEUE_POLL_MS and adds what it queued since. The default, 4 × the default WORKER_CONCURRENCY,
     * queues about four slots' worth of waiting per process: past that a client does better retrying than waiting
     * minutes for a first token behind a 202 that looked fast. Raise it with the number of workers.
     */
    MAX_QUEUED_RUNS: int(128, 0, 1_000_000),
    /** A run's lease: another process may finish a run as `interrupted` once its lease is this old. */
    LEASE_TTL_S: int(30, 1, 86_400),
    /** On SIGTERM/SIGINT, how long running work may go on before it is interrupted and refunded. */
    SHUTDOWN_GRACE_MS: int(10_000, 0, 3_600_000),
    /**
     * Events of a live run always kept in memory for replay, even once its log outgrows its share of
     * RUN_MEMORY_MAX_BYTES (older events are then read from Postgres). It also sets how far a run may publish ahead
     * of Postgres: 4 × this many events (the seq ceiling's window).
     */
    REPLAY_BUFFER_EVENTS: int(512, 16),
    /**
     * The least time between two writes of one run's token events to Postgres: a token is written at once when the
     * run's last write began at least this long ago, else with the tokens that follow it when this much has passed
     * (the first token always at once). Lower: each token reaches other processes sooner; higher: fewer statements.
     */
    EVENT_FLUSH_MS: int(10, 1, 5_000),

    /** SSE: comment ping interval, `retry:` hint, events queued for a slow reader before it is cut loose. */
    SSE_PING_MS: int(15_000, 10, 3_600_000),
    SSE_RETRY_MS: int(2_000, 0, 3_600_000),
    SSE_MAX_QUEUE: int(2_048, 16),
    /** SSE: a client that reads nothing for this long while its socket buffer is full is disconnected. */
    SSE_WRITE_TIMEOUT_MS: int(30_000, 100, 3_600_000),
    /** SSE: how often a stream of a run this process does not execute re-reads Postgres. */
    SSE_POLL_MS: int(1_000, 10, 60_000),
    /** SSE: streams one client IP may hold open at once in this process; the next is `429 too_many_streams`. */
    SSE_MAX_STREAMS_PER_IP: int(32, 1, 100_000),

    /**
     * WebSocket (`GET /api/ws`): a socket is one stream against SSE_MAX_STREAMS_PER_IP and SESSION_MAX_STREAMS, and is
     * pinged every SSE_PING_MS (a peer that has not answered the last ping by the next is closed). Subscriptions one
     * socket may hold at once; bytes it may have queued unread before the subscriptions that have more to send get
     * `resync` and are dropped; how long it has to authenticate; the largest message a client may send.
     */
    WS_MAX_SUBSCRIPTIONS: int(64, 1, 10_000),
    WS_MAX_BUFFERED_BYTES: int(1_048_576, 1_024),
    WS_AUTH_TIMEOUT_MS: int(5_000, 50, 600_000),
    WS_MAX_MESSAGE_BYTES: int(16_384, 256, 1_048_576),

    /** Jobs: evaluation fee, request length limit, and how long a stream waits for the work to start. */
    JOB_EVAL_FEE_SATS: int(10, 1),
    JOB_REQUEST_MAX_CHARS: int(500, 1),
    JOB_STREAM_WAIT_S: z.coerce.number().positive().max(86_400).default(90),
    /** Jobs: a flat fee added to the work invoice. */
    JOB_WORK_FEE_SATS: int(0, 0),

    /** Demo: free synchronous requests per client IP per window (0: the demo is off, every call is 429). */
    DEMO_RATE_LIMIT: int(5, 0),
    DEMO_RATE_WINDOW_S: int(3_600, 1, 31_536_000),
    DEMO_MAX_TOKENS: int(32, 1),

    /**
     * Limits shared by every process (counted in Postgres); over one, `429 rate_limited` with `Retry-After`.
     * For all of these, 0 means no limit. Sessions created per client IP per window; jobs likewise.
     */
    SESSION_CREATE_RATE_LIMIT: int(30, 0),
    SESSION_CREATE_RATE_WINDOW_S: int(3_600, 1, 31_536_000),
    JOB_CREATE_RATE_LIMIT: int(120, 0),
    JOB_CREATE_RATE_WINDOW_S: int(3_600, 1, 31_536_000),
    /** Requests per session (per bearer token) per minute, streams and polls included. */
    SESSION_RATE_LIMIT_PER_MIN: int(300, 0),
    /** Streams open at once per session (and per job). */
    SESSION_MAX_STREAMS: int(10, 0),
    /** An open stream's slot is renewed every third of this; a crashed process's slots free themselves after it. */
    STREAM_SLOT_TTL_S: int(60, 3, 86_400),

    /** Runs API: finished runs served from memory this long; retained in Postgres this many days. */
    RUN_MEMORY_TTL_S: int(3_600, 0, 31_536_000),
    /**
     * Bytes of event logs kept in memory for replay: live runs' logs and recently finished ones together (oldest
     * finished first out). A live run keeps its whole log while it fits an eighth of this. The default, 64 MiB,
     * holds ~250,000 events (a 10,000-token reply is ~2.5 MB): every live run whole, and minutes of finished ones,
     * which is when resumes come.
     */
    RUN_MEMORY_MAX_BYTES: int(64 * 1024 * 1024, 0),
    RUN_RETENTION_DAYS: z.coerce.number().positive().max(HOURS_MAX / 24).default(30),
    /** OpenAI face (/v1): largest JSON body in KiB (whole chat histories arrive in one body). */
    V1_BODY_LIMIT_KB: int(1_024, 1, 100_000),
    /** An `Idempotency-Key` is remembered this many hours (then swept; the same key then starts new work). */
    IDEMPOTENCY_TTL_HOURS: z.coerce.number().positive().max(HOURS_MAX).default(24),

    /** How often the sweeper evicts, expires and recovers. */
    SWEEP_INTERVAL_S: z.coerce.number().min(0.1).max(86_400).default(5),
  })
  .superRefine((c, ctx) => {
    if (c.HTTP_HEADERS_TIMEOUT_MS > c.HTTP_REQUEST_TIMEOUT_MS)
      ctx.addIssue({ code: 'custom', path: ['HTTP_HEADERS_TIMEOUT_MS'], message: 'must not exceed HTTP_REQUEST_TIMEOUT_MS' });
    if (c.SESSION_MIN_SATS > c.SESSION_MAX_SATS)
      ctx.addIssue({ code: 'custom', path: ['SESSION_MIN_SATS'], message: 'must not exceed SESSION_MAX_SATS' });
    if (c.PROCESS_ROLE !== 'all' && !c.DATABASE_URL)
      ctx.addIssue({ code: 'custom', path: ['PROCESS_ROLE'], message: `${c.PROCESS_ROLE} needs DATABASE_URL: the processes of a fleet share one Postgres (the embedded one serves a single process)` });
    if (c.DEFAULT_MAX_TOKENS > c.MAX_TOKENS_LIMIT)
      ctx.addIssue({ code: 'custom', path: ['DEFAULT_MAX_TOKENS'], message: 'must not exceed MAX_TOKENS_LIMIT' });
    if (c.PAYMENT_PROVIDER === 'lnbits') {
      for (const key of ['LNBITS_URL', 'LNBITS_INVOICE_KEY', 'LNBITS_ADMIN_KEY'] as const) {
        if (!c[key]) ctx.addIssue({ code: 'custom', path: [key], message: 'is required with PAYMENT_PROVIDER=lnbits' });
      }
    }
  })
  .transform((c) => ({
    ...c,
    LIGHTNING_NETWORK: c.LIGHTNING_NETWORK ?? (c.PAYMENT_PROVIDER === 'lnbits' ? ('bitcoin' as const) : ('regtest' as const)),
    // The slots under both names from here on (the code reads MAX_CONCURRENT_RUNS): WORKER_CONCURRENCY, or its former name.
    WORKER_CONCURRENCY: c.WORKER_CONCURRENCY ?? c.MAX_CONCURRENT_RUNS,
    MAX_CONCURRENT_RUNS: c.WORKER_CONCURRENCY ?? c.MAX_CONCURRENT_RUNS,
  }));

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Parse an environment (default `process.env`); empty or blank strings count as unset. */
export function loadConfig(env: Record<string, string | undefined> = process.env, overrides: Partial<Config> = {}): Config {
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const parsed = configSchema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}${valueOf(cleaned, i.path)}`),
    );
  }
  return { ...parsed.data, ...overrides };
}

function valueOf(env: Record<string, unknown>, path: PropertyKey[]): string {
  const key = path[0];
  if (typeof key !== 'string' || !(key in env)) return '';
  // Secrets are never echoed, not even in a start-up error.
  return key === 'DATABASE_URL' || key === 'METRICS_TOKEN' || key.endsWith('_KEY') ? ' (value hidden)' : ` (got ${JSON.stringify(env[key])})`;
}
