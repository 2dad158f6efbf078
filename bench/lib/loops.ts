import { now } from './client.js';
import { sleep } from './stats.js';

/** Run `worker` on `clients` concurrent loops for `ms`; returns how many iterations completed (closed loop). */
export async function closedLoop(clients: number, ms: number, worker: (i: number) => Promise<void>): Promise<number> {
  const end = now() + ms;
  let done = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      while (now() < end) {
        await worker(i);
        done++;
      }
    }),
  );
  return done;
}

/** Fire `fn` at `rate` per second for `ms` (open loop: latency counted from when each was due). */
export async function openLoop(rate: number, ms: number, fn: () => Promise<void>): Promise<number[]> {
  const latencies: number[] = [];
  const start = now();
  const total = Math.floor((rate * ms) / 1000);
  const inflight: Array<Promise<void>> = [];
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / rate;
    const wait = due - now();
    if (wait > 1) await sleep(wait);
    inflight.push(fn().then(() => void latencies.push(now() - due)));
  }
  await Promise.all(inflight);
  return latencies;
}
