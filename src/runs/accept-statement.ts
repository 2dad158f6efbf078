import type { RunFace } from '../db/schema.js';
import { BUS_CHANNEL } from '../bus-bridge.js';
import { run, variants, type Queryable } from '../db/statements.js';
import type { PriceSnapshot } from '../db/schema.js';
import { countSql, countValues } from '../limits/session-budget.js';
import type { AiMessage } from '../providers/ai/types.js';
import type { RunRow } from './store.js';

/**
 * The whole acceptance of a plain request as ONE statement (accept.ts: no idempotency key, no conversation, no
 * previous response): the request's count against its session's budget (when pending), the token check, the
 * conditional debit, its ledger row and the run row — the run already `executing` under our lease, with its seq
 * ceiling, when this process has a free slot (the claim folded in), else `queued`.
 *
 * Why it cannot race: it is one statement, so one transaction. The debit is an UPDATE whose WHERE holds the
 * token, the state, the expiry, the balance and the budget; two requests spending the same sats queue on the
 * session's row lock and the second re-checks its WHERE against the first's result (READ COMMITTED re-evaluates
 * an updated row), so they can never both spend the same sats. The ledger row and the run row are inserted from
 * the debit's RETURNING: no debit, no rows; a failure anywhere rolls everything back.
 *
 * A claimed run is attempt 1 of its lease; a queued one has no owner (it is in the shared queue, runs/queue.ts) and
 * this same statement NOTIFYs the claimers (`run:queued`, delivered at its commit): no round trip of its own.
 */
/**
 * The `run:queued` NOTIFY payload, byte for byte what `busMessage(owner, 'run:queued', { runId, sessionId })` writes
 * (JSON.stringify: no spaces; an owner is `<pid>-<hex>` and the ids are uuids, so nothing needs escaping beyond
 * what to_json does). Why it matters: this process's own LISTEN connection hears every one of these, and the bus
 * bridge drops its own messages by their opening bytes, unparsed; `json_build_object` writes `{"o" : …}`, which
 * missed that check and cost a JSON.parse per queued accept.
 */
export const queuedNotice = (owner: string, runId: string, sessionId: string) =>
  `'{"o":' || to_json(${owner})::text || ',"e":"run:queued","p":{"runId":"' || ${runId} || '","sessionId":"' || ${sessionId} || '"}}'`;

const ACCEPT = variants((k: 'counted' | 'plain') => {
  const counted = k === 'counted';
  return `
  with ${counted ? `rl as (${countSql(20)}),` : ''}
  s as (
    update sessions set balance_sats = balance_sats - $3::bigint, last_used_at = now(), expires_at = now() + make_interval(secs => $4::float8)
    where token_hash = $2 and ($1::uuid is null or id = $1::uuid) and state = 'active' and expires_at > now() and balance_sats >= $3::bigint
      ${counted ? 'and (select points from rl) <= $23::int' : ''}
    returning id, balance_sats),
  l as (insert into ledger_entries (session_id, run_id, kind, amount_sats) select s.id, $5, 'debit', -$3::bigint from s),
  r as (
    insert into runs (id, kind, session_id, state, request, model, instructions, turn, input, max_tokens, pricing, debited_sats,
                      face, face_data, ephemeral, lease_owner, lease_expires_at, started_at, seq_ceiling, attempt)
    select $5, 'session', s.id, $6::text, $7, $8, $9, $10::jsonb, $11::jsonb, $12::int, $13::jsonb, $3::bigint, $14, $15::jsonb, $16::boolean,
           case when $6::text = 'executing' then $17::text end,
           case when $6::text = 'executing' then now() + make_interval(secs => $18::float8) end, case when $6::text = 'executing' then now() end,
           case when $6::text = 'executing' then $19::int else 0 end, case when $6::text = 'executing' then 1 else 0 end
    from s returning id, created_at, lease_expires_at)
  select (select balance_sats from s) as balance, (select id from s) as session_id, (select created_at from r) as created_at, (select lease_expires_at from r) as lease_expires_at,
    (select pg_notify('${BUS_CHANNEL}', ${queuedNotice('$17::text', 'r.id', '(select id from s)')}) from r where $6::text = 'queued') as queued
    ${counted ? ', (select points from rl) as rl_points, (select expire from rl) as rl_expire' : ''}`;
});

export interface PlainAcceptance {
  runId: string;
  /** The session, or null: the token names it (`/v1`). */
  sessionId: string | null;
  tokenHash: string;
  amountSats: number;
  expiryHours: number;
  /** Claimed at acceptance (a slot is held): inserted `executing` with a seq ceiling of `window`. */
  claim: boolean;
  request: string;
  model: string;
  instructions: string | null;
  turn: AiMessage[];
  input: AiMessage[];
  maxTokens: number;
  pricing: PriceSnapshot;
  face: RunFace;
  faceData: Record<string, unknown> | null;
  ephemeral: boolean;
  owner: string;
  leaseTtlS: number;
  window: number;
  count?: { key: string; limit: number; windowMs: number };
}

export interface PlainOutcome {
  /** The run as inserted (built from what we sent and the two timestamps Postgres chose), or null: not debited. */
  run: RunRow | null;
  balance: number | null;
  counted?: { points: number; expire: number };
}

/** What the accept statement (single or batch, accept-batch.ts) answers for one request. */
export interface AcceptedRow {
  balance: string | number | null;
  session_id: string | null;
  created_at: Date | null;
  lease_expires_at: Date | null;
  rl_points?: number | null;
  rl_expire?: string | number | null;
}

/** One request's acceptance, from what we sent and what its statement answered. */
export function plainOutcome(a: PlainAcceptance, r: AcceptedRow): PlainOutcome {
  const counted = a.count ? { points: r.rl_points!, expire: Number(r.rl_expire) } : undefined;
  if (r.balance === null || r.balance === undefined) return { run: null, balance: null, counted };
  const createdAt = r.created_at!;
  const state = a.claim ? 'executing' : 'queued';
  const row: RunRow = {
    id: a.runId,
    kind: 'session',
    sessionId: r.session_id,
    jobId: null,
    state,
    request: a.request,
    model: a.model,
    instructions: a.instructions,
    turn: a.turn,
    input: a.input,
    maxTokens: a.maxTokens,
    stopReason: null,
    conversationId: null,
    conversationTurn: null,
    waitsFor: null,
    previousRunId: null,
    face: a.face,
    faceData: a.faceData,
    ephemeral: a.ephemeral,
    pricing: a.pricing,
    debitedSats: a.amountSats,
    chargedSats: 0,
    refundedSats: 0,
    inputTokens: 0,
    outputTokens: 0,
    result: '',
    error: null,
    lastSeq: 0,
    seqCeiling: a.claim ? a.window : 0,
    cancelRequested: false,
    leaseOwner: a.claim ? a.owner : null,
    leaseExpiresAt: r.lease_expires_at,
    attempt: a.claim ? 1 : 0,
    finishToken: null,
    createdAt,
    startedAt: a.claim ? createdAt : null,
    completedAt: null,
  };
  return { run: row, balance: Number(r.balance), counted };
}

/** One plain request, alone: the statement above. */
export async function acceptPlain(pool: Queryable, a: PlainAcceptance): Promise<PlainOutcome> {
  // A plain request's input is its turn, after the instructions if any: one JSON text serves both when there are none.
  const turn = JSON.stringify(a.turn);
  const values: unknown[] = [
    a.sessionId,
    a.tokenHash,
    a.amountSats,
    a.expiryHours * 3600,
    a.runId,
    a.claim ? 'executing' : 'queued',
    a.request,
    a.model,
    a.instructions,
    turn,
    a.instructions ? JSON.stringify(a.input) : turn,
    a.maxTokens,
    JSON.stringify(a.pricing),
    a.face,
    a.faceData === null ? null : JSON.stringify(a.faceData),
    a.ephemeral,
    a.owner,
    a.leaseTtlS,
    a.window,
  ];
  if (a.count) values.push(...countValues(a.count), a.count.limit);
  const res = await run<AcceptedRow>(pool, ACCEPT(a.count ? 'counted' : 'plain'), values);
  return plainOutcome(a, res.rows[0]!);
}
