import { z } from 'zod';
import { Job, Payout } from '../openapi/api-objects.js';
import { cursorHeaders, cursorQuery, uuidParam } from '../openapi/params.js';
import { BODY_ERRORS, RATE_LIMIT_HEADERS, STREAM_ERRORS, apiErrors, json, jsonBody, ok, sse, type DocContext, type ErrorSpec, type Registry } from '../openapi/registry.js';
import { JobFrames, STREAM_DESCRIPTION } from '../openapi/run-events.js';
import { jobCreateBody, jobRefundBody } from './jobs.schemas.js';

const jobId = z.object({ id: uuidParam('The job id (the capability: no token).') });

/** Why a refund invoice can be refused, and what a payout answers (shared with the invoice refund). */
export const REFUND_ERRORS: ErrorSpec = {
  400: ['invalid_request', 'invalid_invoice', 'wrong_network', 'invoice_expired', 'amount_required', 'wrong_amount', 'invoice_already_used'],
  409: ['refund_in_progress', 'refund_already_paid'],
  502: ['payment_failed'],
};

/** The job routes (`jobs.routes.ts`), described with the schemas they validate with. */
export function describeJobs(r: Registry, { config: c }: DocContext): void {
  const tags = ['Jobs'];
  r.registerPath({
    method: 'post',
    path: '/api/jobs',
    operationId: 'createJob',
    tags,
    summary: 'Start a pay-per-request job',
    description: `No account: the job id is the capability. Pay \`evalInvoice\` (JOB_EVAL_FEE_SATS, ${c.JOB_EVAL_FEE_SATS}) and the job is evaluated in the background → \`awaiting_work_payment\` with a \`workInvoice\` and a \`pricingBreakdown\`, or \`rejected\` with a \`reason\`. Pay the work invoice → \`executing\` → \`complete\` with \`result\` and \`costLedger\` (or \`failed\`, with the whole work amount refundable). An invoice not paid in time: \`expired\`. Creation is limited per client IP (JOB_CREATE_RATE_LIMIT).`,
    request: { body: jsonBody(jobCreateBody(c), { haiku: { summary: 'A small job', value: { request: 'Write a haiku about a sluice gate' } } }) },
    responses: {
      201: ok('The job, awaiting its evaluation payment.', json(Job), 'Location', ...RATE_LIMIT_HEADERS),
      ...apiErrors(BODY_ERRORS, { 400: ['invalid_request'], 429: ['rate_limited'], 502: ['payment_provider_error'] }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/api/jobs/{id}',
    operationId: 'getJob',
    tags,
    summary: 'Read a job',
    description: 'Also asks the payment provider about the invoice the job waits for, so a lost settlement event only delays.',
    request: { params: jobId },
    responses: { 200: ok('The job.', json(Job)), ...apiErrors({ 404: ['not_found'] }) },
  });

  r.registerPath({
    method: 'get',
    path: '/api/jobs/{id}/stream',
    operationId: 'streamJob',
    tags,
    summary: 'Stream a job’s work (SSE, resumable)',
    description: `Opened before the work starts, it waits (up to JOB_STREAM_WAIT_S, ${c.JOB_STREAM_WAIT_S} s) and then streams; if the work has not started by then, or cannot (rejected, expired), one \`event: error\` says why and the stream ends. Opened mid-run or after the end: the whole replay.\n\n${STREAM_DESCRIPTION}`,
    request: { params: jobId, headers: cursorHeaders, query: cursorQuery },
    responses: {
      200: ok('The stream.', sse(JobFrames)),
      204: ok('The work has ended and the cursor is at its final event.'),
      ...apiErrors(STREAM_ERRORS, { 404: ['not_found'] }),
    },
  });

  r.registerPath({
    method: 'post',
    path: '/api/jobs/{id}/refund',
    operationId: 'refundJob',
    tags,
    summary: 'Claim what the job owes back',
    description:
      'Give an invoice for exactly `costLedger.refundAmountSats`; the payout’s first attempt is made at once. `200` paid; `202` under way (it failed and will be retried, or its outcome is unknown and will be looked up: never paid twice); `502 payment_failed` when it failed for good (still owed: give another invoice).',
    request: { params: jobId, body: jsonBody(jobRefundBody, { refund: { summary: 'An invoice of your wallet', value: { invoice: 'lnbcrt90n1p…' } } }) },
    responses: {
      200: ok('Paid.', json(Payout)),
      202: ok('Under way.', json(Payout)),
      ...apiErrors(BODY_ERRORS, REFUND_ERRORS, { 404: ['not_found'], 409: ['not_refundable', 'nothing_owed'] }),
    },
  });
}
