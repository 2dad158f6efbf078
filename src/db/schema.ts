import { sql } from 'drizzle-orm';
import {
  bigint,
  bigserial,
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
  varchar,
} from 'drizzle-orm/pg-core';
import type { AiMessage, AiStopReason } from '../providers/ai/types.js';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });
const sats = (name: string) => bigint(name, { mode: 'number' });

/** A prepaid balance. `balance_sats` is a cache of `sum(ledger_entries.amount_sats)` kept in the same transactions. */
export const sessions = pgTable(
  'sessions',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    tokenHash: text('token_hash').notNull(),
    state: text('state').$type<SessionState>().notNull().default('awaiting_payment'),
    balanceSats: sats('balance_sats').notNull().default(0),
    createdAt: ts('created_at').notNull().defaultNow(),
    lastUsedAt: ts('last_used_at').notNull().defaultNow(),
    expiresAt: ts('expires_at').notNull(),
  },
  (t) => [
    uniqueIndex('sessions_token_hash_uq').on(t.tokenHash),
    check('sessions_balance_non_negative', sql`${t.balanceSats} >= 0`),
  ],
);
export type SessionState = 'awaiting_payment' | 'active' | 'paused' | 'expired';

/**
 * Every Lightning invoice the server asked to be paid, and what paying it does. `pending` until paid or
 * closed: `paid` (its effect applied: a session credited, a job moved on), `expired` (closed unpaid, after the
 * provider said so past `expires_at`), or `refundable`: the money arrived but nothing can be delivered for it
 * any more (its job was deleted, its invoice had been closed), so it is held for the payer, who claims it back
 * by showing the preimage. Rows are kept: a late payment must always find its invoice.
 */
export const invoices = pgTable(
  'invoices',
  {
    paymentHash: text('payment_hash').primaryKey(),
    purpose: text('purpose').$type<InvoicePurpose>().notNull(),
    sessionId: uuid('session_id').references(() => sessions.id),
    jobId: uuid('job_id'),
    amountSats: sats('amount_sats').notNull(),
    paymentRequest: text('payment_request').notNull(),
    state: text('state').$type<InvoiceState>().notNull().default('pending'),
    createdAt: ts('created_at').notNull().defaultNow(),
    /** From the invoice itself (timestamp + expiry). Rows from before expiry existed get an hour. */
    expiresAt: ts('expires_at')
      .notNull()
      .default(sql`now() + interval '1 hour'`),
    paidAt: ts('paid_at'),
  },
  (t) => [
    index('invoices_session_idx').on(t.sessionId),
    index('invoices_job_idx').on(t.jobId),
    // The sweeper closes due invoices oldest first.
    index('invoices_pending_expiry_idx').on(t.expiresAt).where(sql`${t.state} = 'pending'`),
  ],
);
export type InvoicePurpose = 'session_deposit' | 'session_topup' | 'job_eval' | 'job_work';
export type InvoiceState = 'pending' | 'paid' | 'expired' | 'refundable';

/**
 * Every sat that moves. `amount_sats` is the signed change to the account named by `session_id` or `job_id`.
 * Rows with a `payment_hash` are Lightning money in (positive) or out (negative); the rest move sats inside a
 * session (debit of an estimate, refund of what was unused). Rows are never updated or deleted.
 */
export const ledgerEntries = pgTable(
  'ledger_entries',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    sessionId: uuid('session_id').references(() => sessions.id),
    jobId: uuid('job_id'),
    runId: uuid('run_id'),
    kind: text('kind').$type<LedgerKind>().notNull(),
    amountSats: sats('amount_sats').notNull(),
    paymentHash: text('payment_hash'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [
    index('ledger_session_idx').on(t.sessionId),
    // One debit and one refund per run, one credit per payment, one of each kind per job:
    // retries and races cannot mint or lose money.
    uniqueIndex('ledger_run_kind_uq').on(t.runId, t.kind).where(sql`${t.runId} is not null`),
    uniqueIndex('ledger_payment_uq').on(t.paymentHash).where(sql`${t.paymentHash} is not null`),
    uniqueIndex('ledger_job_kind_uq').on(t.jobId, t.kind).where(sql`${t.jobId} is not null`),
    // A payment that could not be delivered belongs to no session or job: it is held for its payer.
    check('ledger_account', sql`${t.sessionId} is not null or ${t.jobId} is not null or ${t.kind} in ('undeliverable_payment', 'undeliverable_refund_payout')`),
  ],
);
export type LedgerKind =
  | 'deposit'
  | 'topup'
  | 'debit'
  | 'refund'
  | 'job_eval_payment'
  | 'job_work_payment'
  | 'job_refund_payout'
  /** A payment for something that could no longer be delivered (+), and its refund to the payer (−). */
  | 'undeliverable_payment'
  | 'undeliverable_refund_payout';

/**
 * A thread of runs whose context carries over: each run sees the initial `items` and the turns of the completed
 * runs before it. `turns` numbers the runs; bumping it is also the lock that keeps one active run per thread.
 */
export const conversations = pgTable(
  'conversations',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    sessionId: uuid('session_id')
      .notNull()
      .references(() => sessions.id),
    /** Messages the conversation was created with (before any run). */
    items: jsonb('items').$type<AiMessage[]>().notNull().default([]),
    metadata: jsonb('metadata').$type<Record<string, string>>().notNull().default({}),
    turns: integer('turns').notNull().default(0),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [index('conversations_session_idx').on(t.sessionId), index('conversations_updated_idx').on(t.updatedAt)],
);

/**
 * `Idempotency-Key`s a session used, for `IDEMPOTENCY_TTL_HOURS`. The primary key decides between two
 * identical requests racing: the second insert waits for the first transaction and then conflicts.
 */
export const idempotencyKeys = pgTable(
  'idempotency_keys',
  {
    sessionId: uuid('session_id')
      .notNull()
      .references(() => sessions.id),
    key: text('key').notNull(),
    /** sha256 of the route and the canonical JSON body: the same key with another body is a conflict. */
    fingerprint: text('fingerprint').notNull(),
    runId: uuid('run_id').notNull(),
    /** The front door's original answer, when it is not derived from the run (the /api 202 body). */
    response: jsonb('response'),
    createdAt: ts('created_at').notNull().defaultNow(),
    expiresAt: ts('expires_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.sessionId, t.key] }), index('idempotency_expires_idx').on(t.expiresAt)],
);

/** Every unit of AI work. */
export const runs = pgTable(
  'runs',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    kind: text('kind').$type<RunKind>().notNull(),
    sessionId: uuid('session_id').references(() => sessions.id),
    jobId: uuid('job_id'),
    state: text('state').$type<RunState>().notNull().default('queued'),
    /** A line that stands for the request (display and the /api face); the provider gets `input`. */
    request: text('request').notNull(),
    /** The catalogue model it runs on (null only on rows from before the catalogue: the default model). */
    model: text('model'),
    /** Instructions given with this run only (a system message first in `input`; never carried over). */
    instructions: text('instructions'),
    /** This run's own new messages: what a later turn of its conversation or chain carries over. */
    turn: jsonb('turn').$type<AiMessage[]>(),
    /**
     * The whole provider input (instructions, earlier turns, this turn), resolved at acceptance — or, for a run
     * that waits behind another in its conversation, when it starts. Null before then (and on old rows).
     */
    input: jsonb('input').$type<AiMessage[]>(),
    maxTokens: integer('max_tokens').notNull(),
    /** Why the model stopped (`stop`, `max_tokens`, `content_filter`), once it did. */
    stopReason: text('stop_reason').$type<AiStopReason>(),
    conversationId: uuid('conversation_id').references(() => conversations.id, { onDelete: 'set null' }),
    /** Its place in the conversation: it starts only once every earlier turn has ended. */
    conversationTurn: integer('conversation_turn'),
    /** The run it was enqueued behind (a hint for waking it; the turn order is the rule). */
    waitsFor: uuid('waits_for'),
    /** The run whose context and output it continues (`previous_response_id`). */
    previousRunId: uuid('previous_run_id'),
    /** Which face took it (`api`, `responses`, `chat`) and what that face echoes back; the engine never reads it. */
    face: text('face').$type<RunFace>().notNull().default('api'),
    faceData: jsonb('face_data').$type<Record<string, unknown>>(),
    /** Deleted as soon as it ends (its ledger rows stay): nobody may read it back. */
    ephemeral: boolean('ephemeral').notNull().default(false),
    /** Prices at acceptance, so a config change never reprices work already paid for. */
    pricing: jsonb('pricing').$type<PriceSnapshot>().notNull(),
    debitedSats: sats('debited_sats').notNull().default(0),
    chargedSats: sats('charged_sats').notNull().default(0),
    refundedSats: sats('refunded_sats').notNull().default(0),
    inputTokens: integer('input_tokens').notNull().default(0),
    outputTokens: integer('output_tokens').notNull().default(0),
    /** Concatenation of the persisted token events. */
    result: text('result').notNull().default(''),
    error: jsonb('error').$type<{ code: string; message: string } | null>(),
    /** Highest persisted event seq. */
    lastSeq: integer('last_seq').notNull().default(0),
    /**
     * The highest seq the owner may publish before its next write (tokens reach readers before Postgres has them).
     * Set by the claim, raised by every token flush, in those same statements. Whoever finishes the run without
     * knowing what the owner published (recovery) numbers the final event above it: an id once sent is never reused.
     */
    seqCeiling: integer('seq_ceiling').notNull().default(0),
    /** Set by a stop that reached another process; the owner sees it on its next event flush and aborts. */
    cancelRequested: boolean('cancel_requested').notNull().default(false),
    /**
     * The process driving it (executing), or null: a queued run is in the shared queue, anyone's to claim (#11).
     */
    leaseOwner: text('lease_owner'),
    leaseExpiresAt: ts('lease_expires_at'),
    /**
     * The fencing token of its lease: every claim adds one (the accept's own claim makes it 1), and every write of
     * the attempt (heartbeat, token batch, finish, input) names it in its WHERE, so a process whose lease was taken
     * over can write nothing, however late it wakes up.
     */
    attempt: integer('attempt').notNull().default(0),
    /**
     * Which finish ended it: a token each finisher draws once and keeps across its retries (runs/endings.ts). A
     * finisher whose statement committed but whose reply was lost reads its own token back on the retry, and so knows
     * the end is its own (it announces it here), not another finisher's.
     */
    finishToken: uuid('finish_token'),
    createdAt: ts('created_at').notNull().defaultNow(),
    startedAt: ts('started_at'),
    completedAt: ts('completed_at'),
  },
  (t) => [
    index('runs_session_created_idx').on(t.sessionId, t.createdAt.desc(), t.id.desc()),
    index('runs_live_idx').on(t.state, t.leaseExpiresAt).where(sql`${t.state} in ('queued','executing')`),
    /**
     * The queue, in order of acceptance: exactly the claimable runs (runs/queue.ts claims from its head; its WHERE
     * is this predicate, so the planner reads the head in order and stops at the LIMIT, statistics or not).
     */
    index('runs_queue_idx').on(t.createdAt, t.id).where(sql`${t.state} = 'queued' and ${t.leaseOwner} is null and not ${t.cancelRequested}`),
    index('runs_completed_idx').on(t.completedAt).where(sql`${t.completedAt} is not null`),
    index('runs_ephemeral_idx').on(t.id).where(sql`${t.ephemeral}`),
    uniqueIndex('runs_conversation_turn_uq').on(t.conversationId, t.conversationTurn).where(sql`${t.conversationId} is not null`),
  ],
);
export type RunKind = 'session' | 'job';
export type RunFace = 'api' | 'responses' | 'chat';
export type RunState = 'queued' | 'executing' | 'complete' | 'failed' | 'cancelled' | 'interrupted';
export interface PriceSnapshot {
  inputPer1k: number;
  outputPer1k: number;
  minSats: number;
  /** A flat fee on top of the usage, charged whenever the usage is (a job's `JOB_WORK_FEE_SATS`); absent: none. */
  feeSats?: number;
}

/** The append-only event log of a run; `seq` is the SSE id. */
export const runEvents = pgTable(
  'run_events',
  {
    runId: uuid('run_id')
      .notNull()
      .references(() => runs.id, { onDelete: 'cascade' }),
    seq: integer('seq').notNull(),
    type: text('type').$type<RunEventType>().notNull(),
    data: jsonb('data').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.seq] })],
);
export type RunEventType = 'token' | 'done' | 'error';

/** Pay-per-request work: evaluation invoice, work invoice, a run, a refund. */
export const jobs = pgTable(
  'jobs',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    state: text('state').$type<JobState>().notNull().default('awaiting_eval_payment'),
    request: text('request').notNull(),
    /** Allocated up front so a stream can attach to the run before it exists. */
    runId: uuid('run_id').notNull().defaultRandom(),
    evalPaymentHash: text('eval_payment_hash').notNull(),
    workPaymentHash: text('work_payment_hash'),
    pricing: jsonb('pricing').$type<JobPricing>(),
    reason: text('reason'),
    errorMessage: text('error_message'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('jobs_run_uq').on(t.runId),
    index('jobs_state_idx').on(t.state),
  ],
);
export type JobState =
  | 'awaiting_eval_payment'
  | 'evaluating'
  | 'awaiting_work_payment'
  | 'rejected'
  | 'executing'
  | 'complete'
  | 'failed'
  /** Its evaluation or work invoice expired unpaid. */
  | 'expired';
export interface JobPricing {
  estimatedInputTokens: number;
  estimatedOutputTokens: number;
  inputRateSatsPer1k: number;
  outputRateSatsPer1k: number;
  minSats: number;
  feeSats: number;
  workAmountSats: number;
}

/**
 * Money we pay out: a refund to an invoice the client gave us. `pending` while being paid or waiting to be
 * tried again (`next_attempt_at`), `paid` once the provider confirms it (the ledger row is written then, in
 * the same transaction), `failed` when its attempts are spent on definite failures: the refund is still owed,
 * and the client may give another invoice. `refund_of` names the incoming payment whose money goes back.
 */
export const payouts = pgTable(
  'payouts',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    kind: text('kind').$type<PayoutKind>().notNull(),
    /** The incoming payment refunded: a job's work payment, or an undeliverable payment itself. */
    refundOf: text('refund_of').notNull(),
    jobId: uuid('job_id'),
    amountSats: sats('amount_sats').notNull(),
    /** The BOLT 11 invoice to pay, and its payment hash. */
    invoice: text('invoice').notNull(),
    paymentHash: text('payment_hash').notNull(),
    state: text('state').$type<PayoutState>().notNull().default('pending'),
    attempts: integer('attempts').notNull().default(0),
    lastError: text('last_error'),
    /** The last attempt left the outcome unknown (a timeout, a payment in flight): only a lookup may go on. */
    outcomeUnknown: boolean('outcome_unknown').notNull().default(false),
    nextAttemptAt: ts('next_attempt_at').notNull().defaultNow(),
    /** An attempt in progress holds the payout until then (a dead process's hold lapses). */
    heldUntil: ts('held_until'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
    paidAt: ts('paid_at'),
  },
  (t) => [
    // One invoice settles one refund, ever (a failed payout's invoice is spent too: nodes refuse to retry it).
    uniqueIndex('payouts_payment_hash_uq').on(t.paymentHash),
    // At most one payout of a debt is under way or paid: a second can start only after a failure.
    uniqueIndex('payouts_refund_of_live_uq').on(t.refundOf).where(sql`${t.state} <> 'failed'`),
    index('payouts_due_idx').on(t.nextAttemptAt).where(sql`${t.state} = 'pending'`),
    index('payouts_job_idx').on(t.jobId),
  ],
);
export type PayoutKind = 'job_refund' | 'undeliverable_refund';
export type PayoutState = 'pending' | 'paid' | 'failed';

/**
 * The stub payment provider's own books: it plays a Lightning node, so its invoices and payments
 * survive restarts like a real node's would. An incoming row keeps its preimage (the node's secret, revealed
 * to the payer on payment); an outgoing row is a payment the node made, or tried to.
 */
export const stubInvoices = pgTable('stub_invoices', {
  paymentHash: text('payment_hash').primaryKey(),
  paymentRequest: text('payment_request').notNull(),
  direction: text('direction').$type<'incoming' | 'outgoing'>().notNull(),
  amountSats: sats('amount_sats').notNull(),
  memo: text('memo').notNull().default(''),
  state: text('state').$type<'pending' | 'paid' | 'failed'>().notNull().default('pending'),
  preimage: text('preimage'),
  expiresAt: ts('expires_at'),
  /** Outgoing: what the last failed attempt said. */
  failure: text('failure'),
  createdAt: ts('created_at').notNull().defaultNow(),
  paidAt: ts('paid_at'),
});

// The limits' tables (rate_limits, stream_slots) live beside this file; drizzle-kit reads them through here.
export * from './limits-schema.js';
