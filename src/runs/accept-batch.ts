import type pg from 'pg';
import { BUS_CHANNEL } from '../bus-bridge.js';
import { groupCommit } from '../db/group-commit.js';
import { run, statement } from '../db/statements.js';
import { acceptPlain, plainOutcome, queuedNotice, type AcceptedRow, type PlainAcceptance, type PlainOutcome } from './accept-statement.js';

/**
 * Several plain acceptances in ONE statement: accept-statement.ts's statement, row by row (`$1`, one JSON object per
 * request; `$2`, the clock of the budget counts), in one transaction. Why: every queued accept NOTIFYs, and
 * Postgres serialises the commits of notifying transactions (a global lock taken before commit, held until the
 * notices are queued), so accepts that each commit alone pay a commit (and a WAL flush) one after another. Sent
 * together they pay one.
 *
 * Each request is still its own compare-and-set: its own budget count, its own debit guarded by its own WHERE (the
 * token, the state, the expiry, the balance, the budget), its ledger row and run row from its own debit, its own
 * NOTIFY. A request refused by its WHERE is simply not in `s`; its neighbours are not touched.
 *
 * Why two requests of one session can never be debited out of order or twice against the same sats: a batch holds
 * at most one request per token (the group commit below), a token names one session (a unique index), and batches
 * from this process go one at a time, each after the one before committed. Against other statements (another
 * process's accepts, a finish's refund, the expiry sweep) the row locks decide, as for the single statement.
 *
 * Why it cannot deadlock: every statement that takes several of these locks takes them in one order. The budget
 * rows first, in key order (the insert follows the `order by`); then the sessions, in id order (`lk`, as the finish
 * batch and the expiry sweep lock theirs; `lk` reads all of `rl` first, so no session is locked before every count
 * is). The single accept takes one budget row, then one session: the same order. The finish batch locks runs then
 * sessions (id order) and no budget row; the runs inserted here are new rows nobody else can hold.
 *
 * `$2` is the one "now" of every count in the batch (epoch ms, this process's clock, as rate-limiter-flexible
 * counts); each row carries its own window's end (`rl_expire`, now + its window), which the upsert reads back as
 * `excluded.expire`.
 */
const BATCH = statement(`
  with req as (
    select * from jsonb_to_recordset($1::jsonb) as x(ord int, session_id uuid, token_hash text, amount bigint, expiry_s float8, run_id uuid,
      state text, request text, model text, instructions text, turn jsonb, input jsonb, max_tokens int, pricing jsonb, face text, face_data jsonb,
      ephemeral boolean, owner text, lease_ttl_s float8, win int, rl_key text, rl_expire bigint, rl_limit int)
  ),
  rl as (
    insert into rate_limits (key, points, expire)
    select rl_key, 1, rl_expire from req where rl_key is not null order by rl_key
    on conflict (key) do update set
      points = case when rate_limits.expire <= $2::bigint then 1 else rate_limits.points + 1 end,
      expire = case when rate_limits.expire <= $2::bigint then excluded.expire else rate_limits.expire end
    returning key, points, expire),
  lk as (select id from sessions where token_hash in (select token_hash from req) and (select count(*) from rl) >= 0 order by id for update),
  s as (
    update sessions set balance_sats = sessions.balance_sats - req.amount, last_used_at = now(), expires_at = now() + make_interval(secs => req.expiry_s)
    from req left join rl on rl.key = req.rl_key
    where sessions.id in (select id from lk) and sessions.token_hash = req.token_hash and (req.session_id is null or sessions.id = req.session_id)
      and sessions.state = 'active' and sessions.expires_at > now() and sessions.balance_sats >= req.amount
      and (req.rl_key is null or rl.points <= req.rl_limit)
    returning req.ord, sessions.id, sessions.balance_sats),
  l as (insert into ledger_entries (session_id, run_id, kind, amount_sats) select s.id, req.run_id, 'debit', -req.amount from s join req on req.ord = s.ord),
  r as (
    insert into runs (id, kind, session_id, state, request, model, instructions, turn, input, max_tokens, pricing, debited_sats,
                      face, face_data, ephemeral, lease_owner, lease_expires_at, started_at, seq_ceiling, attempt)
    select req.run_id, 'session', s.id, req.state, req.request, req.model, req.instructions, req.turn, coalesce(req.input, req.turn), req.max_tokens,
           req.pricing, req.amount, req.face, req.face_data, req.ephemeral,
           case when req.state = 'executing' then req.owner end,
           case when req.state = 'executing' then now() + make_interval(secs => req.lease_ttl_s) end, case when req.state = 'executing' then now() end,
           case when req.state = 'executing' then req.win else 0 end, case when req.state = 'executing' then 1 else 0 end
    from s join req on req.ord = s.ord returning id, created_at, lease_expires_at)
  select req.ord, s.balance_sats as balance, s.id as session_id, r.created_at, r.lease_expires_at, rl.points as rl_points, rl.expire as rl_expire,
    case when r.id is not null and req.state = 'queued' then pg_notify('${BUS_CHANNEL}', ${queuedNotice('req.owner', 'r.id', 's.id')}) end as queued
  from req left join s on s.ord = req.ord left join r on r.id = req.run_id left join rl on rl.key = req.rl_key`);

/** One request of a batch: the single statement's parameters, by name. */
function batchRow(a: PlainAcceptance, ord: number, now: number) {
  return {
    ord,
    session_id: a.sessionId,
    token_hash: a.tokenHash,
    amount: a.amountSats,
    expiry_s: a.expiryHours * 3600,
    run_id: a.runId,
    state: a.claim ? 'executing' : 'queued',
    request: a.request,
    model: a.model,
    instructions: a.instructions,
    turn: a.turn,
    // The input is the turn itself when there are no instructions (the statement falls back to it).
    input: a.instructions ? a.input : null,
    max_tokens: a.maxTokens,
    pricing: a.pricing,
    face: a.face,
    face_data: a.faceData,
    ephemeral: a.ephemeral,
    owner: a.owner,
    lease_ttl_s: a.leaseTtlS,
    win: a.window,
    rl_key: a.count?.key ?? null,
    rl_expire: a.count ? now + a.count.windowMs : null,
    rl_limit: a.count?.limit ?? null,
  };
}

/**
 * Errors that may be one row's (a value out of range, a constraint, a lock conflict): the batch's requests are then
 * tried one by one. Any other (the connection, a timeout, Postgres shutting down) is every row's: each gets it.
 */
const ROW_ERROR = /^(22|23|40)/;

/** Requests one batch statement holds at most. */
export const MAX_ACCEPT_BATCH = 64;

/**
 * Group commit of plain acceptances. Why it cannot lose, double or reorder a debit: an acceptance is sent at once
 * when no accept statement of this process is in flight (so a lone request costs exactly the single statement and
 * waits for nothing); those that arrive meanwhile wait for it and go together, as one batch statement, when it
 * returns. A batch takes at most one request per token (the rest wait, in arrival order, for the next batch), so a
 * session's requests are debited one after another, in order, each seeing the balance its predecessor left,
 * exactly as if each had its own statement; and a budget row is counted at most once per statement (an upsert may
 * not touch one row twice). Each caller learns only its own row. If a batch fails for a reason that may be one
 * row's, each of its requests is sent again alone, so one request Postgres refuses fails only itself; the failed
 * batch rolled back as a whole, so nothing of it (not a debit, not a count) happened twice.
 *
 * The trade-off: one session's requests are accepted at most one per round trip of this process's accept statement.
 * They were before too, in effect (each waited for the one before it to commit, on its session's row lock), and
 * the default budget (SESSION_RATE_LIMIT_PER_MIN) allows a session a few a second; the gain is for many sessions.
 */
export function createPlainAccepts(pool: pg.Pool) {
  type Waiting = { a: PlainAcceptance; resolve: (o: PlainOutcome) => void; reject: (err: unknown) => void };

  /** Up to MAX_ACCEPT_BATCH, at most one per token and per budget key; the rest wait, in order, for the next. */
  function pick(waiting: Waiting[]) {
    const batch: Waiting[] = [];
    const later: Waiting[] = [];
    // Tokens and budget keys already in this batch (a key is its token's today; both are checked all the same).
    const taken = new Set<string>();
    for (const w of waiting) {
      const key = w.a.count ? `rl ${w.a.count.key}` : null;
      if (batch.length < MAX_ACCEPT_BATCH && !taken.has(w.a.tokenHash) && !(key && taken.has(key))) {
        taken.add(w.a.tokenHash);
        if (key) taken.add(key);
        batch.push(w);
      } else later.push(w);
    }
    return { batch, later };
  }
  const accepts = groupCommit<Waiting>({ pick, one: (w) => alone(w), many: (batch) => together(batch) });

  async function alone(w: Waiting) {
    try {
      w.resolve(await acceptPlain(pool, w.a));
    } catch (err) {
      w.reject(err);
    }
  }

  async function together(batch: Waiting[]) {
    let rows: AcceptedRow[];
    try {
      const now = Date.now();
      const res = await run<AcceptedRow & { ord: number }>(pool, BATCH, [JSON.stringify(batch.map((w, i) => batchRow(w.a, i, now))), now]);
      rows = [];
      for (const r of res.rows) rows[r.ord] = r;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && ROW_ERROR.test(code)) await Promise.all(batch.map(alone));
      else for (const w of batch) w.reject(err);
      return;
    }
    for (const [i, w] of batch.entries()) {
      // (Every request is a row of the answer: the statement left-joins everything to its input.)
      const r = rows[i];
      if (r) w.resolve(plainOutcome(w.a, r));
      else w.reject(new Error(`the accept batch answered no row for request ${i}`));
    }
  }

  return {
    /** Accept one plain request: alone, or with those that arrive while another accept is in flight. */
    accept(a: PlainAcceptance): Promise<PlainOutcome> {
      return new Promise((resolve, reject) => accepts.add({ a, resolve, reject }));
    },
  };
}

export type PlainAccepts = ReturnType<typeof createPlainAccepts>;
