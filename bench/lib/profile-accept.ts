/**
 * A CPU profile of the server under a steady open-loop load (not saturated, so the profile shows work, not waiting):
 *   node .bench-build/bench/lib/profile-accept.js [accept|health] [rate] [out.cpuprofile]
 * then: node .bench-build/bench/lib/profile-summary.js out.cpuprofile
 */
import { jsonClient, now, paidSession } from './client.js';
import { startBenchPostgres } from './pg.js';
import { startBenchServer } from './server.js';
import { sleep } from './stats.js';

const [what = 'accept', rateArg = '300', out = '/tmp/sluice-accept.cpuprofile'] = process.argv.slice(2);
const rate = Number(rateArg);
const pgs = await startBenchPostgres();
const url = await pgs.freshDatabase('b_profile');
const server = await startBenchServer(url, { SESSION_CREATE_RATE_LIMIT: 0, SESSION_MAX_SATS: 1e9, MAX_CONCURRENT_RUNS: 1, MAX_QUEUED_RUNS: 1e6, LEASE_TTL_S: 3600, SWEEP_INTERVAL_S: 3600 });
try {
  const c = jsonClient(server.url, 64);
  const sessions: Array<{ id: string; auth: Record<string, string> }> = [];
  for (let i = 0; i < 64; i++) sessions.push(await paidSession(c, 1e9));
  const one = (i: number) =>
    what === 'health'
      ? c.request('GET', '/api/healthz')
      : c.request('POST', `/api/sessions/${sessions[i % 64]!.id}/request`, { request: 'profile [bench:gate] [stub:tokens=1]', max_tokens: 1 }, sessions[i % 64]!.auth);
  const load = async (ms: number) => {
    const start = now();
    const all = [];
    for (let i = 0; i < (rate * ms) / 1000; i++) {
      const wait = start + (i * 1000) / rate - now();
      if (wait > 1) await sleep(wait);
      all.push(one(i));
    }
    await Promise.all(all);
    return all.length;
  };
  await load(1000);
  await server.call('profile:start', { intervalUs: 100 });
  const c0 = await server.cpuMs();
  const n = await load(5000);
  const c1 = await server.cpuMs();
  await server.call('profile:stop', { path: out });
  console.log(`${what}: ${n} requests, server CPU ${(((c1 - c0) * 1000) / n).toFixed(0)} µs each (profiling included) → ${out}`);
  c.close();
} finally {
  await server.kill();
  await pgs.stop();
}
