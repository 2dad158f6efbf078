import type { RequestHandler } from 'express';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RunEntry } from '../runs/registry.js';
import type { RunMetrics } from '../runs/executor.js';
import type { RunRow } from '../runs/store.js';

/** What the gauges read at scrape time: nothing is counted on the hot path that a stats() call can answer. */
export interface MetricSources {
  executor: { stats(): { running: number; queued: number } };
  registry: { stats(): { subscribers: number; watchers: number } };
  pool: { totalCount: number; idleCount: number; waitingCount: number };
  /** The open SSE streams (http/sse.ts). */
  streams: { size: number };
  /** The open WebSockets (http/ws.ts). */
  sockets: { size: number };
}

export interface MetricsOptions {
  /** Node's default metrics (process_*, nodejs_*): default true. */
  defaultMetrics?: boolean;
}

/**
 * This process's Prometheus metrics, in a registry of its own (never prom-client's global one: tests build
 * several contexts in one process). Counters move where the event happens — the executor's two hooks
 * (`accepted`, `firstToken`), the finish callback, the AI provider wrapper, the limits — and the gauges are
 * read from the engine's own stats when Prometheus scrapes. Every figure is per process; sum across a fleet.
 */
export function createMetrics(opts: MetricsOptions = {}) {
  const register = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register });
  let sources: MetricSources | null = null;
  const registers = [register];

  const accepted = new Counter({ name: 'sluice_runs_accepted_total', help: 'Runs accepted by this process', labelNames: ['kind'] as const, registers });
  const finished = new Counter({
    name: 'sluice_runs_finished_total',
    help: 'Runs this process finished, by final state',
    labelNames: ['kind', 'state'] as const,
    registers,
  });
  new Gauge({
    name: 'sluice_runs_executing',
    help: 'Runs executing in this process now',
    registers,
    collect() {
      if (sources) this.set(sources.executor.stats().running);
    },
  });
  new Gauge({
    name: 'sluice_runs_queued',
    help: 'Runs waiting in the shared queue (as this process last counted them)',
    registers,
    collect() {
      if (sources) this.set(sources.executor.stats().queued);
    },
  });
  new Gauge({
    name: 'sluice_streams_open',
    help: 'SSE stream connections open on this process',
    registers,
    collect() {
      if (sources) this.set(sources.streams.size);
    },
  });
  new Gauge({
    name: 'sluice_websockets_open',
    help: 'WebSocket connections open on this process (GET /api/ws); their run subscriptions count in sluice_stream_subscribers',
    registers,
    collect() {
      if (sources) this.set(sources.sockets.size);
    },
  });
  new Gauge({
    name: 'sluice_stream_subscribers',
    help: 'Readers attached to live runs in this process (including those waiting for a run to start)',
    registers,
    collect() {
      if (!sources) return;
      const s = sources.registry.stats();
      this.set(s.subscribers + s.watchers);
    },
  });
  const tokens = new Counter({ name: 'sluice_tokens_streamed_total', help: 'Tokens streamed by the AI provider (runs and the demo)', labelNames: ['provider'] as const, registers });
  const acceptLatency = new Histogram({
    name: 'sluice_accept_duration_seconds',
    help: 'From a request that starts work arriving to its 202',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers,
  });
  const firstToken = new Histogram({
    name: 'sluice_time_to_first_token_seconds',
    help: 'From a run being accepted to its first token (queueing included)',
    labelNames: ['kind'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers,
  });
  const debited = new Counter({ name: 'sluice_sats_debited_total', help: 'Sats taken for accepted runs (estimate debits, job work payments)', labelNames: ['kind'] as const, registers });
  const charged = new Counter({ name: 'sluice_sats_charged_total', help: 'Sats charged for finished runs', labelNames: ['kind'] as const, registers });
  const refunded = new Counter({ name: 'sluice_sats_refunded_total', help: 'Sats of finished runs given back or owed back', labelNames: ['kind'] as const, registers });
  const pool = (name: string, help: string, read: (p: MetricSources['pool']) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        if (sources) this.set(read(sources.pool));
      },
    });
  pool('sluice_db_pool_clients', 'Postgres clients in the pool (busy and idle)', (p) => p.totalCount);
  pool('sluice_db_pool_idle_clients', 'Idle Postgres clients in the pool', (p) => p.idleCount);
  pool('sluice_db_pool_waiting_clients', 'Queries waiting for a Postgres client', (p) => p.waitingCount);
  const providerErrors = new Counter({
    name: 'sluice_provider_errors_total',
    help: 'AI provider failures (not client aborts), by provider and error code',
    labelNames: ['provider', 'code'] as const,
    registers,
  });
  const rateLimited = new Counter({ name: 'sluice_rate_limited_total', help: 'Requests refused with 429, by limit', labelNames: ['limit'] as const, registers });

  const tokenChildren = new Map<string, { inc(n: number): void }>();
  /** When each run was accepted; keyed by its registry entry so a run that never streams leaves nothing behind. */
  const acceptedAt = new WeakMap<RunEntry, bigint>();
  const seconds = (from: bigint) => Number(process.hrtime.bigint() - from) / 1e9;

  const runMetrics: RunMetrics = {
    accepted(run, entry, at) {
      accepted.inc({ kind: run.kind });
      debited.inc({ kind: run.kind }, run.debitedSats);
      if (entry) acceptedAt.set(entry, at ?? process.hrtime.bigint());
    },
    firstToken(entry) {
      const at = acceptedAt.get(entry);
      acceptedAt.delete(entry);
      // A run claimed from the queue (perhaps accepted by another process) is timed from its row's acceptance.
      firstToken.observe({ kind: entry.kind }, at === undefined ? Math.max(0, Date.now() - entry.row.createdAt.getTime()) / 1000 : seconds(at));
    },
  };

  return {
    register,
    /** The hooks the executor calls. */
    runs: runMetrics,
    /** Read the gauges from these (called once the engine exists). */
    bind(s: MetricSources) {
      sources = s;
    },
    /** A run this process finished (the executor's onFinish): its final state and its money. */
    runFinished(run: Pick<RunRow, 'kind' | 'state' | 'chargedSats' | 'refundedSats'>) {
      finished.inc({ kind: run.kind, state: run.state });
      if (run.chargedSats > 0) charged.inc({ kind: run.kind }, run.chargedSats);
      if (run.refundedSats > 0) refunded.inc({ kind: run.kind }, run.refundedSats);
    },
    /** Called per token: the labelled child is looked up once per provider, not per call. */
    tokens(provider: string, n = 1) {
      let child = tokenChildren.get(provider);
      if (!child) tokenChildren.set(provider, (child = tokens.labels({ provider })));
      child.inc(n);
    },
    providerError(provider: string, code: string) {
      providerErrors.inc({ provider, code });
    },
    rateLimited(limit: string) {
      rateLimited.inc({ limit });
    },
    /**
     * A route that starts work and does not answer 202 at once (the /v1 face: its answer is the stream or the
     * finished object): observed when its run is accepted, from `since` (the handler's start).
     */
    acceptObserved(route: string, since: bigint) {
      acceptLatency.observe({ route }, seconds(since));
    },
    /** Time a route that starts work: observed when it answers 202. */
    acceptTimer(route: string): RequestHandler {
      return (_req, res, next) => {
        const start = process.hrtime.bigint();
        res.once('finish', () => {
          if (res.statusCode === 202) acceptLatency.observe({ route }, seconds(start));
        });
        next();
      };
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
