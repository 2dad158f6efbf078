import { createHash, randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';

/**
 * The baselines: the minimal SQL of Sluice's work, run with raw `pg` (named, prepared statements) on the same
 * Postgres, as fast as Postgres and the driver allow. What Sluice adds on top of this is its own cost.
 */

const RATE = `
  insert into rate_limits (key, points, expire) values ($1, 1, $2)
  on conflict (key) do update set
    points = case when rate_limits.expire <= $3 then 1 else rate_limits.points + 1 end,
    expire = case when rate_limits.expire <= $3 then $2 else rate_limits.expire end
  returning points`;

/** Accept: count the request, check the token, debit, write the ledger row and the run row — one statement. */
const ACCEPT = `
  with rl as (${RATE}),
  s as (
    update sessions set balance_sats = balance_sats - $4, last_used_at = now(), expires_at = now() + interval '24 hours'
    where id = $5 and token_hash = $6 and state = 'active' and expires_at > now() and balance_sats >= $4
      and (select points from rl) <= 1000000
    returning balance_sats),
  l as (insert into ledger_entries (session_id, run_id, kind, amount_sats) select $5, $7, 'debit', -$4 from s),
  r as (
    insert into runs (id, kind, session_id, state, request, model, turn, input, max_tokens, pricing, debited_sats, lease_owner,
                      lease_expires_at, started_at, seq_ceiling)
    select $7, 'session', $5, $9, $8, 'sluice-stub', $10::jsonb, $10::jsonb, 1, '{"inputPer1k":10,"outputPer1k":40,"minSats":1}', $4,
           'raw', now() + interval '30 seconds', case when $9 = 'executing' then now() end, 2048
    from s returning created_at)
  select (select balance_sats from s) as balance, (select created_at from r) as created_at`;

/** Finish: the state, the token and final events, the refund and its balance, and the notification — one statement. */
const FINISH = `
  with fin as (
    update runs set state = 'complete', result = result || $2, input_tokens = 3, output_tokens = 1, charged_sats = 1,
      refunded_sats = debited_sats - 1, last_seq = 2, completed_at = now(), lease_owner = null, lease_expires_at = null,
      stop_reason = 'stop'
    where id = $1 and state = 'executing' returning id, session_id, refunded_sats),
  ev as (insert into run_events (run_id, seq, type, data) select fin.id, e.seq, e.type, e.data from fin, jsonb_to_recordset($3::jsonb) as e(seq int, type text, data jsonb)),
  ref as (insert into ledger_entries (session_id, run_id, kind, amount_sats) select session_id, id, 'refund', refunded_sats from fin where refunded_sats > 0 returning session_id, amount_sats),
  bal as (update sessions set balance_sats = balance_sats + ref.amount_sats from ref where sessions.id = ref.session_id)
  select pg_notify('sluice_raw', $4) from fin`;

export interface RawSession {
  id: string;
  tokenHash: string;
}

/** Sessions made directly in SQL (active, with a balance and the ledger row that explains it). */
export async function rawSessions(pool: pg.Pool, n: number, sats: number): Promise<RawSession[]> {
  const out: RawSession[] = [];
  for (let i = 0; i < n; i++) {
    const id = randomUUID();
    const tokenHash = createHash('sha256').update(randomBytes(16)).digest('hex');
    await pool.query(
      `with s as (insert into sessions (id, token_hash, state, balance_sats, expires_at) values ($1, $2, 'active', $3, now() + interval '1 day') returning id)
       insert into ledger_entries (session_id, kind, amount_sats, payment_hash) select id, 'deposit', $3, $4 from s`,
      [id, tokenHash, sats, randomBytes(16).toString('hex')],
    );
    out.push({ id, tokenHash });
  }
  return out;
}

export function rawWork(pool: pg.Pool) {
  return {
    /** One accepted run; `executing` as a run claimed at acceptance. */
    async accept(s: RawSession, executing: boolean): Promise<string> {
      const runId = randomUUID();
      const res = await pool.query({
        name: 'raw-accept',
        text: ACCEPT,
        values: [`raw:${s.tokenHash}`, Date.now() + 60_000, Date.now(), 1, s.id, s.tokenHash, runId, 'raw [stub:tokens=1]', executing ? 'executing' : 'queued', JSON.stringify([{ role: 'user', content: 'raw [stub:tokens=1]' }])],
      });
      if (res.rows[0]?.balance === null || res.rows[0]?.balance === undefined) throw new Error('raw accept refused');
      return runId;
    },
    async finish(runId: string): Promise<void> {
      const events = JSON.stringify([
        { seq: 1, type: 'token', data: { content: 'Sluice' } },
        { seq: 2, type: 'done', data: { state: 'complete', result: 'Sluice', debitedSats: 1, chargedSats: 1, refundedSats: 0 } },
      ]);
      await pool.query({ name: 'raw-finish', text: FINISH, values: [runId, 'Sluice', events, JSON.stringify({ e: 'run:finish', p: { runId } })] });
    },
  };
}
