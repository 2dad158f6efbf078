import os from 'node:os';
import type { BenchPostgres } from './pg.js';
import type { BenchServer } from './server.js';
import { now } from './client.js';
import { repeated, round } from './stats.js';

/** One figure of the suite, as written to bench/results.json. */
export interface Figure {
  bench: string;
  metric: string;
  unit: string;
  /** Median over the repeats. */
  value: number;
  /** (max − min) / median over the repeats, in percent: how noisy this figure was in this run. */
  noisePct?: number;
  runs?: number[];
  /** A baseline measured in the same run, and measured / baseline. */
  baseline?: { what: string; value: number };
  ratio?: number;
  /** The goal, as the issue states it (for the reader; the suite does not fail on it). */
  goal?: string;
  note?: string;
}

/**
 * A figure against a baseline measured in the same run: the median of each side's repeats, this side's repeats and
 * noise, and the ratio (rounded to `digits`, 2 for the ratio).
 */
export function versus(
  f: Pick<Figure, 'bench' | 'metric' | 'unit' | 'goal' | 'note'> & { mine: number[]; base: number[]; baseline: string; digits: number },
): Figure {
  const mine = repeated(f.mine);
  const base = repeated(f.base);
  return {
    bench: f.bench,
    metric: f.metric,
    unit: f.unit,
    value: round(mine.median, f.digits),
    noisePct: round(mine.noisePct, 0),
    runs: mine.runs.map((x) => round(x, f.digits)),
    baseline: { what: f.baseline, value: round(base.median, f.digits) },
    ratio: round(mine.median / base.median, 2),
    ...(f.goal ? { goal: f.goal } : {}),
    ...(f.note ? { note: f.note } : {}),
  };
}

export interface BenchEnv {
  pg: BenchPostgres;
  repeats: number;
  /** Shorter windows and fewer samples (a smoke run). */
  quick: boolean;
  figures: Figure[];
  log(line: string): void;
}

/** Wall time, server CPU, Postgres CPU and this process's CPU over a stretch of work. */
export async function measured<T>(env: BenchEnv, servers: BenchServer[], fn: () => Promise<T>) {
  // BENCH_CPU_PROF=<dir>: a CPU profile of the first server over each measured stretch (it costs CPU: not for figures).
  const prof = process.env.BENCH_CPU_PROF && servers[0] ? `${process.env.BENCH_CPU_PROF}/${Date.now()}.cpuprofile` : null;
  if (prof) await servers[0]!.call('profile:start');
  const cpu0 = await Promise.all(servers.map((s) => s.cpuMs()));
  const pg0 = env.pg.cpuMs();
  const me0 = process.cpuUsage();
  const t0 = now();
  const result = await fn();
  const wallMs = now() - t0;
  const me = process.cpuUsage(me0);
  const cpu1 = await Promise.all(servers.map((s) => s.cpuMs()));
  if (prof) await servers[0]!.call('profile:stop', { path: prof });
  return {
    result,
    wallMs,
    serverCpuMs: cpu1.map((c, i) => c - cpu0[i]!),
    pgCpuMs: env.pg.cpuMs() - pg0,
    clientCpuMs: (me.user + me.system) / 1000,
  };
}

export const load = () => os.loadavg()[0]!;
