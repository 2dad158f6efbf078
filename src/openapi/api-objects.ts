import { z } from 'zod';
import { RUN_STATES } from '../runs/runs.schemas.js';

/**
 * The objects the `/api` face answers with, as the OpenAPI document describes them (components, by `id`). They
 * mirror the views the routes build (`sessionView`, `runFields`, `invoiceView`, `payoutView`, `jobView`); the
 * contract test parses real answers with them and fails on any field they do not list, so they cannot drift.
 */

const isoTime = () => z.iso.datetime({ offset: true });
const uuid = (description?: string) => z.string().meta({ format: 'uuid', ...(description ? { description } : {}) });
const sats = (description?: string) => z.int().meta(description ? { description } : {});
const hash = (description: string) => z.string().regex(/^[0-9a-f]{64}$/).meta({ description });

export const Invoice = z
  .object({
    paymentRequest: z.string().meta({ description: 'The BOLT 11 invoice to pay (show it as a QR code).' }),
    paymentHash: hash('Its payment hash: the id of the invoice (`GET /api/invoices/{paymentHash}`).'),
    amountSats: sats(),
    state: z.enum(['pending', 'paid', 'expired', 'refundable']).meta({
      description:
        '`pending` until paid; `paid`; `expired` (closed unpaid: it can no longer open a session or start a job); `refundable` (paid, but for something that could no longer be delivered: claim it back).',
    }),
    expiresAt: isoTime(),
  })
  .meta({ id: 'Invoice', description: 'A real BOLT 11 invoice on the server’s Lightning network.' });

export const SessionCreated = z
  .object({
    sessionId: uuid(),
    sessionToken: z.string().meta({ description: 'The bearer token of the session (256 random bits). Shown only here: keep it.', example: 'sk_…' }),
    state: z.literal('awaiting_payment'),
    invoice: Invoice,
  })
  .meta({ id: 'SessionCreated' });

const sessionState = z.enum(['awaiting_payment', 'active', 'paused', 'expired']).meta({
  description: '`awaiting_payment` until the deposit is paid; `active`; `paused` (reserved); `expired` after SESSION_EXPIRY_HOURS without use, or when its deposit expired unpaid (a paid top-up revives it).',
});

export const Session = z
  .object({
    sessionId: uuid(),
    state: sessionState,
    balanceSats: sats(),
    expiresAt: isoTime(),
    createdAt: isoTime(),
    invoices: z
      .array(Invoice.extend({ purpose: z.enum(['session_deposit', 'session_topup']) }))
      .meta({ description: 'Its newest 5 invoices.' }),
  })
  .meta({ id: 'Session' });

export const TopupCreated = z.object({ invoice: Invoice }).meta({ id: 'Topup' });

export const Ledger = z
  .object({
    sessionId: uuid(),
    balanceSats: sats('Always the sum of the entries.'),
    entries: z.array(
      z.object({
        kind: z.enum(['deposit', 'topup', 'debit', 'refund']),
        amountSats: sats('Signed: money in is positive, a debit negative.'),
        runId: uuid().nullable(),
        paymentHash: z.string().nullable(),
        createdAt: isoTime(),
      }),
    ),
  })
  .meta({ id: 'Ledger', description: 'A session’s balance and every movement of its money, read from one snapshot.' });

export const RequestAccepted = z
  .object({
    requestId: uuid('The run id of the request.'),
    sessionId: uuid(),
    state: z.enum(['queued', 'executing']),
    debitedSats: sats('The estimate taken from the balance (input size + `max_tokens` at the model’s prices); the unused part is refunded when the run ends.'),
    balanceRemaining: sats(),
  })
  .meta({ id: 'RequestAccepted' });

const usage = z.object({ inputTokens: z.int(), outputTokens: z.int() }).meta({ id: 'Usage' });

/** The public fields of a run (`runFields`), shared by a session request and the runs API. */
const runFields = {
  state: z.enum(RUN_STATES),
  face: z.enum(['api', 'responses', 'chat']).meta({ description: 'Which door took it: `api` (a session request), or the OpenAI face’s `responses` or `chat`.' }),
  model: z.string(),
  request: z.string(),
  result: z.string().meta({ description: 'The text so far while it runs; the whole reply once it ended.' }),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  stopReason: z.string().nullable().meta({ description: 'Why the model stopped, once complete: `stop`, `max_tokens` or `content_filter`.' }),
  debitedSats: sats(),
  chargedSats: sats(),
  refundedSats: sats(),
  usage,
  createdAt: isoTime(),
  startedAt: isoTime().nullable(),
  completedAt: isoTime().nullable(),
};

export const SessionRequest = z
  .object({ requestId: uuid(), sessionId: uuid(), ...runFields })
  .meta({ id: 'SessionRequest', description: 'A session request: a run of the engine.' });

export const Run = z
  .object({
    runId: uuid(),
    kind: z.enum(['session', 'job']),
    ...runFields,
    links: z.object({ self: z.string(), stream: z.string(), stop: z.string() }),
  })
  .meta({ id: 'Run' });

export const RunPage = z
  .object({ data: z.array(Run), nextCursor: z.string().nullable().meta({ description: 'Pass as `cursor` for the next page; null on the last.' }) })
  .meta({ id: 'RunPage' });

export const RunCancelling = z.object({ runId: uuid(), state: z.literal('cancelling') }).meta({ id: 'RunCancelling' });

// ---------------------------------------------------------------------------------------------------------------
// Refund payouts, invoices and jobs

export const Payout = z
  .object({
    state: z.enum(['paying', 'paid', 'failed']).meta({ description: '`paying` (under way, or waiting for its next attempt), `paid`, or `failed` for good (still owed: give another invoice).' }),
    amountSats: sats(),
    refundPaymentHash: hash('The payment hash of the invoice being paid.'),
    attempts: z.int(),
    lastError: z.string().optional(),
    outcomeUnknown: z.boolean().optional().meta({ description: 'While paying: the last attempt’s outcome is unknown (it will be looked up, never paid again).' }),
    nextAttemptAt: isoTime().optional(),
    paidAt: isoTime().optional(),
  })
  .meta({ id: 'Payout', description: 'A refund paid to an invoice the client gave.' });

export const InvoiceDetails = Invoice.extend({
  purpose: z.enum(['session_deposit', 'session_topup', 'job_eval', 'job_work']),
  createdAt: isoTime(),
  paidAt: isoTime().optional(),
  refund: z
    .union([Payout, z.object({ state: z.literal('claimable'), amountSats: sats() })])
    .optional()
    .meta({ description: 'A `refundable` invoice only: the payout of its refund, or `claimable` before one was asked for.' }),
}).meta({ id: 'InvoiceDetails' });

const jobState = z.enum(['awaiting_eval_payment', 'evaluating', 'awaiting_work_payment', 'rejected', 'executing', 'complete', 'failed', 'expired']);

export const Job = z
  .object({
    jobId: uuid('The job id is the capability: whoever has it can read, stream and refund the job.'),
    state: jobState,
    request: z.string(),
    evalInvoice: Invoice,
    workInvoice: Invoice.optional(),
    pricingBreakdown: z
      .object({
        estimatedInputTokens: z.int(),
        estimatedOutputTokens: z.int(),
        inputRateSatsPer1k: z.number(),
        outputRateSatsPer1k: z.number(),
        minSats: sats(),
        feeSats: sats(),
        workAmountSats: sats(),
      })
      .optional(),
    reason: z.string().optional().meta({ description: 'Why it was rejected, or that its invoice expired.' }),
    result: z.string().optional(),
    errorMessage: z.string().optional(),
    costLedger: z
      .object({
        actualInputTokens: z.int(),
        actualOutputTokens: z.int(),
        totalTokens: z.int(),
        actualAmountSats: sats(),
        workAmountSats: sats(),
        refundAmountSats: sats(),
        refundState: z.enum(['not_applicable', 'pending', 'paying', 'paid', 'failed']).meta({
          description: '`not_applicable` (nothing owed), `pending` (owed: give an invoice), `paying`, `paid`, or `failed` (still owed: give another invoice).',
        }),
        refundPaymentHash: z.string().optional(),
        refundAttempts: z.int().optional(),
        refundLastError: z.string().optional(),
        refundNextAttemptAt: isoTime().optional(),
        refundOutcomeUnknown: z.boolean().optional(),
      })
      .optional()
      .meta({ description: 'Once the work ended.' }),
    createdAt: isoTime(),
    updatedAt: isoTime(),
  })
  .meta({ id: 'Job' });
