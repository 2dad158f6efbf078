import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { createBus, type Bus } from './bus.js';
import { BUS_CHANNEL, createBusBridge, type BusBridge } from './bus-bridge.js';
import type { Config } from './config.js';
import type { Database, Db } from './db/pool.js';
import { createStreamLimiter, type StreamLimiter } from './http/stream-limit.js';
import { createSettlement, type Settlement } from './ledger/settlement.js';
import type { Catalogue } from './models/catalogue.js';
import { createModels, type Models } from './models/providers.js';
import type { AiProvider } from './providers/ai/types.js';
import { createPaymentProvider } from './providers/payments/provider.js';
import type { StubPaymentProvider } from './providers/payments/stub.js';
import type { PaymentProvider } from './providers/payments/types.js';
import { createPayouts, type Payouts } from './ledger/payouts.js';
import { createExecutor, type Executor } from './runs/executor.js';
import { createMaintenance, type Maintenance } from './runs/maintenance.js';
import { createRegistry, type Registry } from './runs/registry.js';
import { createRunStore, type RunStore } from './runs/store.js';
import { createQueue, type Queue } from './runs/queue.js';
import { createRecentRuns, type RecentRuns } from './runs/recent.js';
import { createRunNews, type RunNews } from './runs/news.js';
import { createFollowers, type Followers } from './runs/follow.js';
import { createSseHub, type SseHub } from './http/sse.js';
import { createSocketHub, type SocketHub } from './http/ws.js';
import { withRunStates } from './runs/session-notices.js';
import { createAccept, type Accept } from './runs/accept.js';
import { createConversationStore, type ConversationStore } from './runs/conversations.js';
import { sweepKeys } from './runs/idempotency.js';
import { createSessionsService, settleSessionRun, type SessionsService } from './sessions/sessions.service.js';
import { createJobsService, settleJobRun, type JobsService } from './jobs/jobs.service.js';
import { createLimits, type Limits } from './http/limits.js';
import { runLogFields } from './logger.js';
import { instrumentAi } from './metrics/instrument-ai.js';
import { createMetrics, type Metrics } from './metrics/metrics.js';
import { createJobWaits, type JobWaits } from './jobs/job-wait.js';

/** Everything a request handler or background task may use. Built once by `createContext`; tests build their own. */
export interface AppContext {
  config: Config;
  db: Db;
  database: Database;
  log: Logger;
  bus: Bus;
  registry: Registry;
  /** Finished runs kept in memory for RUN_MEMORY_TTL_S. */
  recent: RecentRuns;
  /** Wakes the readers of a run when it has news in Postgres (from any process). */
  news: RunNews;
  /** Runs driven by another process, read from Postgres once here for all their readers. */
  followers: Followers;
  /** Every open SSE stream of this process, pinged by one timer. */
  sse: SseHub;
  /** Every open WebSocket of this process (`GET /api/ws`), pinged by the same timer; closed at shutdown. */
  sockets: SocketHub;
  store: RunStore;
  conversations: ConversationStore;
  executor: Executor;
  /** The one way work is accepted (debit + run + idempotency + conversation gating, one transaction). */
  accept: Accept;
  /** The model catalogue, each model with its provider. */
  models: Models;
  payments: PaymentProvider;
  /** Set when the stub payment provider is in use (it exposes `markPaid` for the dev route and tests). */
  stubPayments: StubPaymentProvider | null;
  settlement: Settlement;
  /** Refunds paid out to clients' invoices, retried through failures, never twice. */
  payouts: Payouts;
  sessions: SessionsService;
  jobs: JobsService;
  maintenance: Maintenance;
  /** The bus across processes (LISTEN/NOTIFY); started and stopped with the server. */
  bridge: BusBridge;
  /** This process's id as a lease owner. */
  instanceId: string;
  /** What this process does: `all`, `api` (accepts and streams, executes nothing) or `worker` (claims and executes). */
  role: Config['PROCESS_ROLE'];
  /** The shared queue of runs (the `runs` table). */
  queue: Queue;
  /** Prometheus metrics of this process (its own registry). */
  metrics: Metrics;
  /** Rate and concurrency limits, counted in Postgres (shared by every process). */
  limits: Limits;
  /** Open SSE streams per client IP. */
  streams: StreamLimiter;
  /** Job streams waiting for the work to start, one shared watch per job. */
  jobWaits: JobWaits;
}

export interface ContextOptions {
  config: Config;
  database: Database;
  log: Logger;
  /** Run every model with this AI provider (tests); default: each catalogue entry's own provider. */
  ai?: AiProvider;
  /** The model catalogue (default: loaded from `config`). */
  catalogue?: Catalogue;
  /** Where the catalogue's keys are read from (default `process.env`). */
  env?: Record<string, string | undefined>;
  payments?: PaymentProvider;
  /** Node's default metrics in this context's registry (default true). */
  defaultMetrics?: boolean;
}

export function createContext(opts: ContextOptions): AppContext {
  const { config, database, log } = opts;
  const db = database.db;
  const bus = createBus();
  const instanceId = `${process.pid}-${randomUUID().slice(0, 8)}`;
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics });
  const models = createModels(config, { catalogue: opts.catalogue, override: opts.ai, env: opts.env, log, wrap: (p) => instrumentAi(p, metrics) });
  const chosen = opts.payments ? { payments: opts.payments, stub: null } : createPaymentProvider(config, db, log);
  const { payments, stub: stubPayments } = chosen;
  // A live run keeps its whole log while it fits an eighth of the memory budget; finished logs share the rest.
  const registry = createRegistry({ bufferSize: config.REPLAY_BUFFER_EVENTS, runMaxBytes: config.RUN_MEMORY_MAX_BYTES / 8 });
  const store = createRunStore(db, database.pool);
  const recent = createRecentRuns({ ttlMs: config.RUN_MEMORY_TTL_S * 1000, maxBytes: config.RUN_MEMORY_MAX_BYTES, liveBytes: () => registry.bytes });
  const settlement = createSettlement({ db, bus, log, payments, config });
  const payouts = createPayouts({ db, log, payments, config });
  const queue = createQueue(database.pool);
  const role = config.PROCESS_ROLE;
  const executor = createExecutor({
    db,
    store,
    queue,
    registry,
    models,
    bus,
    log,
    instanceId,
    settlers: { session: settleSessionRun, job: settleJobRun },
    // An `api` process executes nothing: every run it accepts goes to the queue.
    maxConcurrent: role === 'api' ? 0 : config.MAX_CONCURRENT_RUNS,
    maxQueued: config.MAX_QUEUED_RUNS,
    sessionCap: config.SESSION_MAX_CONCURRENT_RUNS || Infinity,
    pollMs: config.QUEUE_POLL_MS,
    leaseTtlS: config.LEASE_TTL_S,
    flushMs: config.EVENT_FLUSH_MS,
    maxBacklog: config.REPLAY_BUFFER_EVENTS * 4,
    // Session runs stay answerable from memory for a while; nothing of a job stays once it is over. An
    // ephemeral run is gone the moment it ends (its ledger rows stay; the sweep catches one whose process died).
    onFinish: (run, events) => {
      if (run.ephemeral) {
        store.delete(run.id).catch((err) => log.warn({ err, runId: run.id }, 'deleting an ephemeral run failed; the sweep will'));
      } else if (run.kind === 'session') recent.put(run, events());
      metrics.runFinished(run);
      log.info({ runId: run.id, ...runLogFields(run) }, 'run finished');
    },
    // The metrics' hooks, which also announce new and started runs to the session notices of `GET /api/ws`.
    metrics: withRunStates(bus, metrics.runs),
  });
  const limits = createLimits({ config, pool: database.pool, log, onLimited: (limit) => metrics.rateLimited(limit) });
  const conversations = createConversationStore(db);
  const accept = createAccept({ config, db, pool: database.pool, store, conversations, executor, instanceId, models }).accept;
  const sessions = createSessionsService({ config, db, pool: database.pool, limits, settlement, accept, models });
  const jobs = createJobsService({ config, db, bus, log, models, settlement, payouts, executor, store, instanceId, evaluates: role !== 'api' });
  const retentionCutoff = () => new Date(Date.now() - config.RUN_RETENTION_DAYS * 86_400_000);
  const maintenance = createMaintenance({
    config,
    db,
    store,
    executor,
    log,
    instanceId,
    // Invoices close before jobs are swept, so a job whose invoice just expired is seen expired.
    extraSweeps: [
      () => settlement.sweep(),
      () => jobs.sweep(),
      () => payouts.sweep(),
      () => recent.sweep(),
      () => limits.sweep(),
      async () => void (await queue.requeueExpired()),
      async () => void (await sweepKeys(db)),
      async () => void (await store.deleteEndedEphemeral()),
      async () => void (await conversations.deleteIdleBefore(retentionCutoff())),
    ],
  });
  const bridge = createBusBridge({
    connectionString: database.url,
    bus,
    origin: instanceId,
    log,
    notify: (payload) => database.pool.query('select pg_notify($1, $2)', [BUS_CHANNEL, payload]),
  });
  const news = createRunNews(bus);
  const followers = createFollowers({ registry, store, bus, pollMs: config.SSE_POLL_MS, log });
  const sse = createSseHub({ pingMs: config.SSE_PING_MS });
  const sockets = createSocketHub({
    maxMessageBytes: config.WS_MAX_MESSAGE_BYTES,
    maxBufferedBytes: config.WS_MAX_BUFFERED_BYTES,
    writeTimeoutMs: config.SSE_WRITE_TIMEOUT_MS,
    keepAlive: (s) => sse.keepAlive(s),
  });
  metrics.bind({ executor, registry, pool: database.pool, streams: sse, sockets });
  const streams = createStreamLimiter(config.SSE_MAX_STREAMS_PER_IP);
  const jobWaits = createJobWaits({ bus, jobs, config, db, log });
  return { role, queue, jobWaits, streams, news, followers, sse, sockets, bridge, config, db, database, log, bus, registry, recent, store, conversations, executor, accept, models, payments, stubPayments, settlement, payouts, sessions, jobs, maintenance, instanceId, metrics, limits };
}
