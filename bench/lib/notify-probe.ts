/**
 * What one pg_notify costs the raw accept baseline (bench/lib/raw.ts's statement, 64 clients over a pool of 10):
 * its rate and Postgres CPU per accept without and with a pg_notify in the statement, with and without a listener.
 * Postgres serialises the commits of notifying transactions (PreCommit_Notify takes a global lock held through the
 * commit), which is why Sluice's queued accepts are group-committed (src/runs/accept-batch.ts):
 *   npx tsc -p tsconfig.bench.json && node .bench-build/bench/lib/notify-probe.js
 */
import pg from 'pg';
import { now } from './client.js';
import { startBenchPostgres } from './pg.js';
import { rawSessions } from './raw.js';
import { randomUUID } from 'node:crypto';

const pgs = await startBenchPostgres();
const url = await pgs.freshDatabase('b_probe');
const raw = new pg.Pool({ connectionString: url, max: 10 });
raw.on('error', () => {});
const rawS = await rawSessions(raw, 640, 1e9);
const settings = await raw.query(`select name, setting from pg_settings where name in ('fsync','synchronous_commit','wal_sync_method','commit_delay','server_version')`);
console.log(settings.rows.map((r) => `${r.name}=${r.setting}`).join(' '));
const base = (notify: boolean) => `
  with rl as (insert into rate_limits (key, points, expire) values ($1, 1, $2)
  on conflict (key) do update set points = case when rate_limits.expire <= $3 then 1 else rate_limits.points + 1 end,
    expire = case when rate_limits.expire <= $3 then $2 else rate_limits.expire end returning points),
  s as (update sessions set balance_sats = balance_sats - $4, last_used_at = now(), expires_at = now() + interval '24 hours'
    where id = $5 and token_hash = $6 and state = 'active' and expires_at > now() and balance_sats >= $4 and (select points from rl) <= 1000000
    returning balance_sats),
  l as (insert into ledger_entries (session_id, run_id, kind, amount_sats) select $5, $7, 'debit', -$4 from s),
  r as (insert into runs (id, kind, session_id, state, request, model, turn, input, max_tokens, pricing, debited_sats, lease_owner, lease_expires_at, started_at, seq_ceiling)
    select $7, 'session', $5, $9, $8, 'sluice-stub', $10::jsonb, $10::jsonb, 1, '{"inputPer1k":10,"outputPer1k":40,"minSats":1}', $4, 'raw', now() + interval '30 seconds', null, 2048
    from s returning id, created_at)
  select (select balance_sats from s) as balance ${notify ? `, (select pg_notify('sluice_bus', json_build_object('o','x','e','run:queued','p',json_build_object('runId', r.id))::text) from r) as q` : ''}`;
let turn = 0;
async function loop(name: string, text: string, ms: number) {
  const end = now() + ms;
  let n = 0;
  const c0 = pgs.cpuMs();
  const t0 = now();
  await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    while (now() < end) {
      const s = rawS[(i * 10 + (turn++ % 10)) % 640]!;
      await raw.query({ name, text, values: [`raw:${s.tokenHash}`, Date.now() + 60000, Date.now(), 1, s.id, s.tokenHash, randomUUID(), 'x', 'queued', '[{"role":"user","content":"x"}]'] });
      n++;
    }
  }));
  const wall = now() - t0;
  console.log(`${name.padEnd(22)} ${((n * 1000) / wall).toFixed(0)}/s  pg CPU ${(((pgs.cpuMs() - c0) * 1000) / n).toFixed(0)} µs each`);
}
const listener = new pg.Client({ connectionString: url });
await listener.connect();
let heard = 0;
listener.on('notification', () => heard++);
for (let k = 0; k < 2; k++) {
  await loop('plain', base(false), 3000);
  await loop('notify-nolisten', base(true), 3000);
}
await listener.query('listen sluice_bus');
for (let k = 0; k < 2; k++) {
  await loop('plain', base(false), 3000);
  await loop('notify-listened', base(true), 3000);
}
console.log('heard', heard);
await listener.end();
await raw.end();
await pgs.stop();
