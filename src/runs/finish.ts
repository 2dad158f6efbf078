import { randomUUID } from 'node:crypto';
import { eq } from 'drizzle-orm';
import type pg from 'pg';
import { BUS_CHANNEL, busMessage } from '../bus-bridge.js';
import { firstOf, groupCommit } from '../db/group-commit.js';
import { clientOf, type Db } from '../db/pool.js';
import { runs, type RunKind, type RunState } from '../db/schema.js';
import { ISO_MS, run, statement, type Queryable, type Statement } from '../db/statements.js';
import { settle } from '../ledger/pricing.js';
import type { Models } from '../models/providers.js';
import type { AiStopReason } from '../providers/ai/types.js';
import { inputOf } from './context.js';
import type { RunEvent } from './registry.js';
import { isLive, type RunRow } from './store.js';

export interface Usage {
  inputTokens: number;
  outputTokens: number;
}

/** `usage` is what the provider reported; a count it never sent is estimated from the run (see `finishRun`). */
export type Outcome =
  | { state: 'complete'; usage?: Partial<Usage>; stopReason?: AiStopReason }
  | { state: 'cancelled' | 'interrupted'; usage?: Partial<Usage> }
  /**
   * `chargeProduced`: the reply was cut after the client had received text (a provider connection that broke
   * mid-stream): that text is charged, estimated like any count the provider never sent; the rest is refunded.
   * Every other failure refunds in full.
   */
  | { state: 'failed'; error: { code: string; message: string }; chargeProduced?: boolean; usage?: Partial<Usage> };

/**
 * How a front door moves the money of a finished run, as SQL that runs inside the finish statement itself: CTEs
 * (comma-separated, each named after its door) that read `fin`, the finished run (`id, kind, state, session_id,
 * job_id, refunded_sats, error`), and act only on runs of their `kind`. A session gets its refund credited; a job
 * records what it owes back. Being part of the statement that moves the run's state, the money cannot move without
 * it, or it without the money.
 */
export interface Settler {
  sql: string;
}
export type Settlers = Record<RunKind, Settler>;

export interface Finished {
  run: RunRow;
  final: RunEvent;
  /** False when another finisher got there first; `final` is then the event it wrote. */
  won: boolean;
}

export interface FinishDeps {
  db: Db;
  pool: pg.Pool;
  settlers: Settlers;
  /** This process's bus origin: the finish NOTIFYs every other process itself (bus-bridge.ts). */
  origin: string;
  /** Each model's tokenizer: the estimate of a count the provider never sent. */
  models: Pick<Models, 'tokenizer'>;
}

/**
 * The finish of a run, in ONE statement: the token events not yet in the log (those past the row's `last_seq`,
 * so a batch whose commit we never heard of is not written twice), the final event (its `completedAt` from the
 * same `now()` as the row's), the state with its usage and money, the front doors' settlement CTEs, and the
 * NOTIFY of `run:finish` (one: every process that hears it tells its session's waiters too, bus-bridge.ts). It is a
 * compare-and-set: only a live run, and, when `$11` names an owner, only while that owner holds its lease for the
 * attempt `$15` (the fence: an owner whose lease
 * was taken over finishes nothing).
 */
function finishStatement(settlers: Settlers): Statement {
  const parts = Object.values(settlers).map((s) => s.sql.trim()).filter(Boolean);
  return statement(`
    with old as (select last_seq from runs where id = $1),
    tok as (
      select e.seq, e.type, e.data from jsonb_to_recordset($3::jsonb) as e(seq int, type text, data jsonb)
      where e.seq > (select last_seq from old)
    ),
    fin as (
      update runs set state = $2, result = result || coalesce((select string_agg(tok.data->>'content', '' order by tok.seq) from tok), ''),
        input_tokens = $4, output_tokens = $5, charged_sats = $6, refunded_sats = $7, error = $8::jsonb, stop_reason = $9,
        last_seq = $10::int, completed_at = now(), lease_owner = null, lease_expires_at = null, finish_token = $16::uuid
      where id = $1 and state in ('queued','executing') and ($11::text is null or (lease_owner = $11 and attempt = $15::int))
      returning id, kind, state, session_id, job_id, refunded_sats, error, completed_at
    ),
    ev as (
      insert into run_events (run_id, seq, type, data)
      select fin.id, tok.seq, tok.type, tok.data from fin, tok
      union all
      select fin.id, $10::int, $12::text, $13::jsonb || jsonb_build_object('completedAt', to_char(fin.completed_at at time zone 'UTC', ${ISO_MS})) from fin
    )${parts.length ? `,\n    ${parts.join(',\n    ')}` : ''}
    select fin.completed_at, pg_notify('${BUS_CHANNEL}', $14) from fin`);
}

/**
 * The owners' finish of several runs at once: the statement above, row by row (`$1`, one JSON object per run), in
 * one transaction. Each run is its own compare-and-set under its own fence: a run no longer live or no longer ours
 * is simply not in `fin`, and its caller falls back as for the single statement. Its runs' money moves as one run's
 * does (the settlers read every row of `fin`), and each run's `run:finish` is its own NOTIFY, all sent at its one
 * commit: listeners are woken once per batch, not once per run.
 */
function batchStatement(settlers: Settlers): Statement {
  const parts = Object.values(settlers).map((s) => s.sql.trim()).filter(Boolean);
  return statement(`
    with inp as (
      select * from jsonb_to_recordset($1::jsonb) as x(id uuid, state text, toks jsonb, input_tokens int, output_tokens int,
        charged_sats bigint, refunded_sats bigint, error jsonb, stop_reason text, last_seq int, owner text, attempt int,
        final_type text, final_data jsonb, notice text, finish_token uuid)
    ),
    tok as (
      select inp.id, e.seq, e.type, e.data from inp join runs o on o.id = inp.id
        cross join lateral jsonb_to_recordset(inp.toks) as e(seq int, type text, data jsonb)
      where e.seq > o.last_seq
    ),
    -- The runs locked in id order first (as the lease renewal does, store.ts): two statements that lock several
    -- runs each can then never wait on each other in a cycle.
    lk as (select r.id from runs r where r.id in (select id from inp) order by r.id for update of r),
    fin as (
      update runs set state = inp.state,
        result = runs.result || coalesce((select string_agg(tok.data->>'content', '' order by tok.seq) from tok where tok.id = inp.id), ''),
        input_tokens = inp.input_tokens, output_tokens = inp.output_tokens, charged_sats = inp.charged_sats, refunded_sats = inp.refunded_sats,
        error = inp.error, stop_reason = inp.stop_reason, last_seq = inp.last_seq, completed_at = now(), lease_owner = null, lease_expires_at = null,
        finish_token = inp.finish_token
      from inp
      where runs.id = inp.id and runs.id in (select id from lk) and runs.state in ('queued','executing') and runs.lease_owner = inp.owner and runs.attempt = inp.attempt
      returning runs.id, runs.kind, runs.state, runs.session_id, runs.job_id, runs.refunded_sats, runs.error, runs.completed_at
    ),
    ev as (
      insert into run_events (run_id, seq, type, data)
      select fin.id, tok.seq, tok.type, tok.data from fin join tok on tok.id = fin.id
      union all
      select fin.id, inp.last_seq, inp.final_type, inp.final_data || jsonb_build_object('completedAt', to_char(fin.completed_at at time zone 'UTC', ${ISO_MS}))
      from fin join inp on inp.id = fin.id
    )${parts.length ? `,\n    ${parts.join(',\n    ')}` : ''}
    select fin.id, fin.completed_at, pg_notify('${BUS_CHANNEL}', inp.notice) from fin join inp on inp.id = fin.id`);
}

/** What a finish writes, worked out from what the finisher knows of the run. */
interface Plan {
  runId: string;
  owner: string | null;
  /** The owner's attempt (its fence); ignored without an owner. */
  attempt: number;
  fresh: RunEvent[];
  updated: RunRow;
  /** This finisher's token (schema.ts `finishToken`): the same across its retries. */
  token: string;
}

async function write(on: Queryable, st: Statement, origin: string, p: Plan): Promise<Finished | undefined> {
  const u = p.updated;
  const final = finalEvent(u, u.lastSeq);
  const finish = busMessage(origin, 'run:finish', { runId: u.id, kind: u.kind, state: u.state, sessionId: u.sessionId, jobId: u.jobId });
  const res = await run<{ completed_at: Date }>(on, st, [
    p.runId,
    u.state,
    JSON.stringify(p.fresh.map((e) => ({ seq: e.seq, type: e.type, data: e.data }))),
    u.inputTokens,
    u.outputTokens,
    u.chargedSats,
    u.refundedSats,
    u.error === null ? null : JSON.stringify(u.error),
    u.stopReason,
    u.lastSeq,
    p.owner,
    final.type,
    JSON.stringify(final.data),
    finish,
    p.attempt,
    p.token,
  ]);
  const done = res.rows[0];
  if (!done) return undefined;
  const finished = { ...u, completedAt: done.completed_at, finishToken: p.token };
  return { run: finished, final: finalEvent(finished, u.lastSeq), won: true };
}

/** One run of a batch statement: the single statement's parameters, by name. */
function batchRow(origin: string, p: Plan) {
  const u = p.updated;
  const final = finalEvent(u, u.lastSeq);
  return {
    id: p.runId,
    state: u.state,
    toks: p.fresh.map((e) => ({ seq: e.seq, type: e.type, data: e.data })),
    input_tokens: u.inputTokens,
    output_tokens: u.outputTokens,
    charged_sats: u.chargedSats,
    refunded_sats: u.refundedSats,
    error: u.error,
    stop_reason: u.stopReason,
    last_seq: u.lastSeq,
    owner: p.owner,
    attempt: p.attempt,
    final_type: final.type,
    final_data: final.data,
    notice: busMessage(origin, 'run:finish', { runId: u.id, kind: u.kind, state: u.state, sessionId: u.sessionId, jobId: u.jobId }),
    finish_token: p.token,
  };
}

/** The row a finish produces, from the row before it, the events it adds, and the outcome. */
function plan(models: FinishDeps['models'], row: RunRow, runId: string, owner: string | null, token: string, outcome: Outcome, fresh: RunEvent[], lastSeq: number, tokensSeen: number, result: string): Plan {
  // The provider's counts are charged. One it never sent (a stream stopped before its usage, a server that sends
  // none) is estimated by the model's tokenizer: the input it was given, and the text it visibly produced — a token
  // event is a chunk of text, not one token. The charge never exceeds the debit (`settle`).
  const reported = outcome.usage;
  const usage: Usage =
    reported?.inputTokens !== undefined && reported.outputTokens !== undefined
      ? { inputTokens: reported.inputTokens, outputTokens: reported.outputTokens }
      : {
          inputTokens: reported?.inputTokens ?? (row.startedAt ? models.tokenizer(row.model).contextEstimate(inputOf(row)) : 0),
          outputTokens: reported?.outputTokens ?? models.tokenizer(row.model).textEstimate(result),
        };
  // Complete work is charged; a stop, or a reply cut mid-stream, is charged for what it produced; other failures
  // and interruptions refund all.
  const producedCharged = outcome.state === 'cancelled' || (outcome.state === 'failed' && outcome.chargeProduced === true);
  const chargeable = outcome.state === 'complete' || (producedCharged && tokensSeen > 0);
  const money = settle(row.pricing, row.debitedSats, usage, chargeable);
  const updated: RunRow = {
    ...row,
    state: outcome.state,
    result,
    inputTokens: usage.inputTokens,
    outputTokens: usage.outputTokens,
    chargedSats: money.chargedSats,
    refundedSats: money.refundedSats,
    error: outcome.state === 'failed' ? outcome.error : null,
    stopReason: outcome.state === 'complete' ? (outcome.stopReason ?? 'stop') : null,
    lastSeq,
    completedAt: null,
    leaseOwner: null,
    leaseExpiresAt: null,
  };
  return { runId, owner, attempt: row.attempt, fresh, updated, token };
}

const tokenText = (events: RunEvent[]) => events.map((e) => (e.data as { content: string }).content).join('');

export function createFinisher(deps: FinishDeps) {
  const st = finishStatement(deps.settlers);
  const batchSt = batchStatement(deps.settlers);

  /**
   * Group commit of the owners' finishes. Why it cannot lose or double a finish: a finish is sent at once when no
   * owner's finish statement is in flight from this process (so a lone run costs exactly the single statement); the
   * finishes that arrive meanwhile wait for it and go together, as one batch statement, when it returns. Each run in
   * a batch is its own compare-and-set, and each caller learns only its own row's outcome. If a batch fails as a
   * whole, each of its runs is written again on its own, so one run Postgres refuses fails only itself.
   */
  type Waiting = { p: Plan; resolve: (f: Finished | undefined) => void; reject: (err: unknown) => void };
  const MAX_BATCH = 64;
  const owners = groupCommit<Waiting>({ pick: firstOf(MAX_BATCH), one: (w) => writeOne(w), many: (batch) => writeBatch(batch) });

  async function writeOne(w: Waiting) {
    try {
      w.resolve(await write(deps.pool, st, deps.origin, w.p));
    } catch (err) {
      w.reject(err);
    }
  }

  async function writeBatch(batch: Waiting[]) {
    let res: pg.QueryResult<{ id: string; completed_at: Date }>;
    try {
      res = await run<{ id: string; completed_at: Date }>(deps.pool, batchSt, [JSON.stringify(batch.map((w) => batchRow(deps.origin, w.p)))]);
    } catch {
      // (Each alone: the error, if it is one run's, reaches only that run's caller.)
      await Promise.all(batch.map(writeOne));
      return;
    }
    const won = new Map(res.rows.map((r) => [r.id, r.completed_at]));
    for (const w of batch) {
      const at = won.get(w.p.runId);
      if (at === undefined) {
        w.resolve(undefined);
        continue;
      }
      const finished = { ...w.p.updated, completedAt: at, finishToken: w.p.token };
      w.resolve({ run: finished, final: finalEvent(finished, w.p.updated.lastSeq), won: true });
    }
  }

  const writeOwned = (p: Plan) => new Promise<Finished | undefined>((resolve, reject) => owners.add({ p, resolve, reject }));

  /**
   * Whoever finished first: its row and final event (the loser of a race reads and delivers them). The winner may be
   * this very finisher: its statement committed but its reply was lost, and the retry found the run already ended.
   * Its token says so, and it then announces the end as its own (`won`), as it would have without the loss.
   */
  async function winner(runId: string, token: string): Promise<Finished | undefined> {
    const [row] = await deps.db.select().from(runs).where(eq(runs.id, runId));
    if (!row) return undefined;
    if (isLive(row.state)) return undefined;
    const res = await deps.pool.query<RunEvent>('select seq, type, data from run_events where run_id = $1 order by seq desc limit 1', [runId]);
    return { run: row, final: res.rows[0] ?? finalEvent(row, row.lastSeq + 1), won: row.finishToken === token };
  }

  return {
    /**
     * The owner's finish: everything it needs is in memory (the row it accepted or claimed, what it published, the
     * events the writer still holds), so the finish is the one statement, no read first. The final event comes
     * right after `published`, the highest seq it handed to readers: the log stays gapless. If the statement finds
     * the run no longer live or no longer ours, the general finish below decides (and reads the winner).
     */
    async owned(row: RunRow, owner: string, outcome: Outcome, pending: RunEvent[], published: number, tokensSeen: number, result: string, token: string = randomUUID()): Promise<Finished | undefined> {
      const fresh = pending.filter((e) => e.type === 'token');
      // `result`: the text of every token it published (in the log or in `pending`), which is what the row holds after.
      const p = plan(deps.models, row, row.id, owner, token, outcome, fresh, Math.max(published, row.lastSeq, fresh.at(-1)?.seq ?? 0) + 1, tokensSeen, result);
      const done = await writeOwned(p);
      return done ?? this.any(row.id, outcome, pending, published, { owner, attempt: row.attempt }, token);
    },

    /**
     * Finish a run whoever holds it (recovery, a stop of a queued run, an owner that lost track; `fence`: only while
     * that owner's attempt still holds it): in one transaction,
     * the row is read and locked, then the finish statement runs. The row lock plus the state check make it a
     * compare-and-set: whoever comes second reads the winner's final event instead of writing its own.
     *
     * The final event's seq is never one a reader already holds. An owner passes `published`, the highest seq it
     * handed to readers (all of them are in the log or in `pending`), and the final event comes right after it.
     * Anyone else (recovery, or an owner that no longer knows) cannot know what was published, so it numbers the
     * final event after the run's seq ceiling, the most the owner was ever allowed to publish: the log then has a
     * gap before its final event, which every reader accepts (see feed.ts).
     */
    async any(runId: string, outcome: Outcome, pending: RunEvent[] = [], published?: number, fence?: { owner: string; attempt: number }, token: string = randomUUID()): Promise<Finished | undefined> {
      const out = await deps.db.transaction(async (tx) => {
        const [row] = await tx.select().from(runs).where(eq(runs.id, runId)).for('update');
        if (!row) return { none: true as const };
        if (!isLive(row.state)) return { lost: true as const };
        // An owner whose attempt was taken over finishes nothing, live or not (the winner is read, if there is one).
        if (fence && (row.leaseOwner !== fence.owner || row.attempt !== fence.attempt)) return { lost: true as const };
        const fresh = pending.filter((e) => e.seq > row.lastSeq && e.type === 'token');
        const lastSeq = (published === undefined ? Math.max(row.lastSeq, row.seqCeiling) : Math.max(published, row.lastSeq, fresh.at(-1)?.seq ?? 0)) + 1;
        const p = plan(deps.models, row, runId, null, token, outcome, fresh, lastSeq, row.outputTokens + fresh.length, row.result + tokenText(fresh));
        return { done: await write(clientOf(tx), st, deps.origin, p) };
      });
      if ('none' in out) return undefined;
      if ('lost' in out) return winner(runId, token);
      return out.done;
    },
  };
}

export type Finisher = ReturnType<typeof createFinisher>;

/**
 * The last event of every stream: `done` with the money, or `error` for a failure. Both carry what a reader
 * needs to describe the finished run without reading its row (a face's stream is a function of the log).
 */
export function finalEvent(run: RunRow, seq: number): RunEvent {
  const common = {
    result: run.result,
    debitedSats: run.debitedSats,
    chargedSats: run.chargedSats,
    refundedSats: run.refundedSats,
    usage: { inputTokens: run.inputTokens, outputTokens: run.outputTokens },
    completedAt: run.completedAt?.toISOString() ?? null,
  };
  if (run.state === 'failed') {
    return {
      seq,
      type: 'error',
      data: { state: 'failed', code: run.error?.code ?? 'failed', message: run.error?.message ?? 'the run failed', ...common },
    };
  }
  return { seq, type: 'done', data: { state: run.state as RunState, ...common, stopReason: run.stopReason } };
}
