import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { createBus, type Bus } from './bus.js';
import { BUS_CHANNEL, createBusBridge, type BusBridge } from './bus-bridge.js';
import type { Config } from './config.js';
import type { Database, Db } from './db/pool.js';
import { createStreamLimiter, type StreamLimiter } from './http/stream-limit.js';
import { createSettlement, type Settlement } from './ledger/settlement.js';
import { createStubAiProvider } from './providers/ai/stub.js';
import type { AiProvider } from './providers/ai/types.js';
import { createStubPaymentProvider, type StubPaymentProvider } from './providers/payments/stub.js';
import type { PaymentProvider } from './providers/payments/types.js';
import { createExecutor, type Executor } from './runs/executor.js';
import { createMaintenance, type Maintenance } from './runs/maintenance.js';
import { createRegistry, type Registry } from './runs/registry.js';
import { createRunStore, type RunStore } from './runs/store.js';
import { createRecentRuns, type RecentRuns } from './runs/recent.js';
import { createRunNews, type RunNews } from './runs/news.js';
import { createSessionsService, settleSessionRun, type SessionsService } from './sessions/sessions.service.js';
import { createJobsService, settleJobRun, type JobsService } from './jobs/jobs.service.js';
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
  store: RunStore;
  executor: Executor;
  ai: AiProvider;
  payments: PaymentProvider;
  /** Set when the stub payment provider is in use (it exposes `markPaid` for the dev route and tests). */
  stubPayments: StubPaymentProvider | null;
  settlement: Settlement;
  sessions: SessionsService;
  jobs: JobsService;
  maintenance: Maintenance;
  /** The bus across processes (LISTEN/NOTIFY); started and stopped with the server. */
  bridge: BusBridge;
  /** This process's id as a lease owner. */
  instanceId: string;  /** Open SSE streams per client IP. */
  streams: StreamLimiter;
  /** Job streams waiting for the work to start, one shared watch per job. */
  jobWaits: JobWaits;
}

export interface ContextOptions {
  config: Config;
  database: Database;
  log: Logger;
  /** Override the providers (default: the stubs, configured from `config`). */
  ai?: AiProvider;
  payments?: PaymentProvider;
}

export function createContext(opts: ContextOptions): AppContext {
  const { config, database, log } = opts;
  const db = database.db;
  const bus = createBus();
  const instanceId = `${process.pid}-${randomUUID().slice(0, 8)}`;
  const ai = opts.ai ?? createStubAiProvider({ tokenDelayMs: config.STUB_TOKEN_DELAY_MS, outputTokens: config.STUB_OUTPUT_TOKENS });
  const stubPayments = opts.payments ? null : createStubPaymentProvider(db);
  const payments = opts.payments ?? stubPayments!;
  const registry = createRegistry({ bufferSize: config.REPLAY_BUFFER_EVENTS });
  const store = createRunStore(db);
  const recent = createRecentRuns({ ttlMs: config.RUN_MEMORY_TTL_S * 1000, max: config.RUN_MEMORY_MAX });
  const settlement = createSettlement({ db, bus, log, payments });
  const executor = createExecutor({
    db,
    store,
    registry,
    ai,
    bus,
    log,
    instanceId,
    settlers: { session: settleSessionRun, job: settleJobRun },
    maxConcurrent: config.MAX_CONCURRENT_RUNS,
    leaseTtlS: config.LEASE_TTL_S,
    flushMs: config.EVENT_FLUSH_MS,
    maxBacklog: config.REPLAY_BUFFER_EVENTS * 4,
    // Session runs stay answerable from memory for a while; nothing of a job stays once it is over.
    onFinish: (run, events) => {
      if (run.kind === 'session') recent.put(run, events());
    },
  });
  const sessions = createSessionsService({ config, db, payments, settlement, executor, store, instanceId });
  const jobs = createJobsService({ config, db, bus, log, ai, payments, settlement, executor, store, instanceId });
  const maintenance = createMaintenance({ config, db, store, executor, log, instanceId, extraSweeps: [() => jobs.sweep(), () => recent.sweep()] });
  const bridge = createBusBridge({
    connectionString: database.url,
    bus,
    origin: instanceId,
    log,
    notify: (payload) => database.pool.query('select pg_notify($1, $2)', [BUS_CHANNEL, payload]),
  });
  const news = createRunNews(bus);
  const streams = createStreamLimiter(config.SSE_MAX_STREAMS_PER_IP);
  const jobWaits = createJobWaits({ bus, jobs, config, db, log });
  return { jobWaits, streams, news, bridge, config, db, database, log, bus, registry, recent, store, executor, ai, payments, stubPayments, settlement, sessions, jobs, maintenance, instanceId };
}
