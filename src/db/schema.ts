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
} from 'drizzle-orm/pg-core';

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

/** Every Lightning invoice the server asked to be paid, and what paying it does. */
export const invoices = pgTable(
  'invoices',
  {
    paymentHash: text('payment_hash').primaryKey(),
    purpose: text('purpose').$type<InvoicePurpose>().notNull(),
    sessionId: uuid('session_id').references(() => sessions.id),
    jobId: uuid('job_id'),
    amountSats: sats('amount_sats').notNull(),
    paymentRequest: text('payment_request').notNull(),
    state: text('state').$type<'pending' | 'paid'>().notNull().default('pending'),
    createdAt: ts('created_at').notNull().defaultNow(),
    paidAt: ts('paid_at'),
  },
  (t) => [index('invoices_session_idx').on(t.sessionId), index('invoices_job_idx').on(t.jobId)],
);
export type InvoicePurpose = 'session_deposit' | 'session_topup' | 'job_eval' | 'job_work';

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
    check('ledger_account', sql`${t.sessionId} is not null or ${t.jobId} is not null`),
  ],
);
export type LedgerKind =
  | 'deposit'
  | 'topup'
  | 'debit'
  | 'refund'
  | 'job_eval_payment'
  | 'job_work_payment'
  | 'job_refund_payout';

/** Every unit of AI work. */
export const runs = pgTable(
  'runs',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    kind: text('kind').$type<RunKind>().notNull(),
    sessionId: uuid('session_id').references(() => sessions.id),
    jobId: uuid('job_id'),
    state: text('state').$type<RunState>().notNull().default('queued'),
    request: text('request').notNull(),
    maxTokens: integer('max_tokens').notNull(),
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
    leaseOwner: text('lease_owner'),
    leaseExpiresAt: ts('lease_expires_at'),
    createdAt: ts('created_at').notNull().defaultNow(),
    startedAt: ts('started_at'),
    completedAt: ts('completed_at'),
  },
  (t) => [
    index('runs_session_created_idx').on(t.sessionId, t.createdAt.desc(), t.id.desc()),
    index('runs_live_idx').on(t.state, t.leaseExpiresAt).where(sql`${t.state} in ('queued','executing')`),
    index('runs_completed_idx').on(t.completedAt).where(sql`${t.completedAt} is not null`),
  ],
);
export type RunKind = 'session' | 'job';
export type RunState = 'queued' | 'executing' | 'complete' | 'failed' | 'cancelled' | 'interrupted';
export interface PriceSnapshot {
  inputPer1k: number;
  outputPer1k: number;
  minSats: number;
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
    refundState: text('refund_state').$type<'none' | 'paying' | 'paid'>().notNull().default('none'),
    refundInvoice: text('refund_invoice'),
    refundPaymentHash: text('refund_payment_hash'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('jobs_run_uq').on(t.runId),
    index('jobs_state_idx').on(t.state),
    // An invoice can be paid once: it may settle the refund of one job only.
    uniqueIndex('jobs_refund_invoice_uq').on(t.refundInvoice).where(sql`${t.refundInvoice} is not null`),
  ],
);
export type JobState =
  | 'awaiting_eval_payment'
  | 'evaluating'
  | 'awaiting_work_payment'
  | 'rejected'
  | 'executing'
  | 'complete'
  | 'failed';
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
 * The stub payment provider's own books: it plays a Lightning node, so its invoices and payments
 * survive restarts like a real node's would.
 */
export const stubInvoices = pgTable('stub_invoices', {
  paymentHash: text('payment_hash').primaryKey(),
  paymentRequest: text('payment_request').notNull(),
  direction: text('direction').$type<'incoming' | 'outgoing'>().notNull(),
  amountSats: sats('amount_sats').notNull(),
  memo: text('memo').notNull().default(''),
  state: text('state').$type<'pending' | 'paid'>().notNull().default('pending'),
  createdAt: ts('created_at').notNull().defaultNow(),
  paidAt: ts('paid_at'),
});
