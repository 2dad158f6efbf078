/** Small statistics for benchmark samples (milliseconds or any unit). */

export function percentile(xs: ArrayLike<number>, p: number): number {
  const a = Array.from(xs).sort((x, y) => x - y);
  if (a.length === 0) return NaN;
  const i = Math.min(a.length - 1, Math.max(0, Math.ceil((p / 100) * a.length) - 1));
  return a[i]!;
}

export interface Summary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(xs: ArrayLike<number>): Summary {
  const a = Array.from(xs);
  const mean = a.reduce((s, x) => s + x, 0) / Math.max(1, a.length);
  return { n: a.length, p50: percentile(a, 50), p90: percentile(a, 90), p99: percentile(a, 99), max: percentile(a, 100), mean };
}

export const median = (xs: number[]) => percentile(xs, 50);

/**
 * Repeated measurements of one figure: the median (what we report) and how far the repeats strayed from it,
 * in percent of the median (min and max): the noise of that figure on this machine in this run.
 */
export interface Repeated {
  median: number;
  min: number;
  max: number;
  /** (max − min) / median, in percent. */
  noisePct: number;
  runs: number[];
}

export function repeated(runs: number[]): Repeated {
  const m = median(runs);
  const min = Math.min(...runs);
  const max = Math.max(...runs);
  return { median: m, min, max, noisePct: m === 0 ? 0 : ((max - min) / Math.abs(m)) * 100, runs };
}

export const round = (x: number, digits = 2) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
