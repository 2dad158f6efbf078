import { z } from 'zod';
import { Ledger, RequestAccepted, Session, SessionCreated, SessionRequest, TopupCreated } from '../openapi/api-objects.js';
import { cursorHeaders, cursorQuery, idempotencyHeaders, uuidParam } from '../openapi/params.js';
import { BODY_ERRORS, RATE_LIMIT_HEADERS, SESSION_ERRORS, STREAM_ERRORS, apiErrors, bearer, bearerOrQuery, json, jsonBody, ok, sse, type DocContext, type Registry } from '../openapi/registry.js';
import { RunFrames, STREAM_DESCRIPTION } from '../openapi/run-events.js';
import { createSessionBody, requestBody, topupBody } from './sessions.schemas.js';

const sessionId = z.object({ id: uuidParam('The session id.') });
const requestIds = z.object({ id: uuidParam('The session id.'), requestId: uuidParam('The request id (its run id).') });

/** The session routes (`sessions.routes.ts`), described with the schemas they validate with. */
export function describeSessions(r: Registry, { config: c, defaultModel }: DocContext): void {
  const tags = ['Sessions'];
  r.registerPath({
    method: 'post',
    path: '/api/sessions',
    operationId: 'createSession',
    tags,
    summary: 'Open a prepaid session',
    description: `Answers with the session's token (shown only here) and a deposit invoice of \`amount_sats\` (${c.SESSION_MIN_SATS}–${c.SESSION_MAX_SATS}). Paying it makes the session \`active\` with that balance. Creation is limited per client IP (SESSION_CREATE_RATE_LIMIT).`,
    request: { body: jsonBody(createSessionBody(c), { deposit: { summary: 'A 200-sat deposit', value: { amount_sats: 200 } } }) },
    responses: {
      201: ok('The session, awaiting its deposit.', json(SessionCreated), ...RATE_LIMIT_HEADERS),
      ...apiErrors({ 400: ['invalid_request'], 429: ['rate_limited'], 502: ['payment_provider_error'] }, BODY_ERRORS),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/api/sessions/{id}',
    operationId: 'getSession',
    tags,
    summary: 'Read a session',
    description: 'Its state, balance and newest invoices. Also asks the payment provider about unpaid invoices, so a lost settlement event only delays.',
    security: bearer,
    request: { params: sessionId },
    responses: { 200: ok('The session.', json(Session), ...RATE_LIMIT_HEADERS), ...apiErrors(SESSION_ERRORS) },
  });

  r.registerPath({
    method: 'post',
    path: '/api/sessions/{id}/topup',
    operationId: 'topUpSession',
    tags,
    summary: 'Top up a session',
    description: 'An invoice of `amount_sats`; paying it credits the balance (and revives an expired session).',
    security: bearer,
    request: { params: sessionId, body: jsonBody(topupBody(c), { topup: { summary: 'Add 500 sats', value: { amount_sats: 500 } } }) },
    responses: {
      201: ok('The top-up invoice.', json(TopupCreated), ...RATE_LIMIT_HEADERS),
      ...apiErrors(SESSION_ERRORS, BODY_ERRORS, { 400: ['invalid_request'], 502: ['payment_provider_error'] }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/api/sessions/{id}/ledger',
    operationId: 'getSessionLedger',
    tags,
    summary: 'A session’s ledger',
    description: 'Every movement of the session’s money; the entries always sum to the balance.',
    security: bearer,
    request: { params: sessionId },
    responses: { 200: ok('The ledger.', json(Ledger), ...RATE_LIMIT_HEADERS), ...apiErrors(SESSION_ERRORS) },
  });

  r.registerPath({
    method: 'post',
    path: '/api/sessions/{id}/request',
    operationId: 'createSessionRequest',
    tags,
    summary: 'Ask for AI work, paid from the balance',
    description:
      'Answers `202` at once, whatever the model does: the estimate (input size + `max_tokens` at the model’s prices) is debited in the transaction that creates the run; the work happens in the background. Poll the `Location`, or stream it. When the run ends it is charged for what it used and the rest is refunded.',
    security: bearer,
    request: {
      params: sessionId,
      headers: idempotencyHeaders,
      body: jsonBody(requestBody(c), {
        simple: { summary: 'A question', value: { request: 'Tell me about sluice gates' } },
        bounded: { summary: 'A short answer from a chosen model', value: { request: 'Name three rivers', max_tokens: 64, model: defaultModel } },
      }),
    },
    responses: {
      202: ok('Accepted: the request is a queued (or already executing) run.', json(RequestAccepted), 'Location', 'Idempotent-Replayed', ...RATE_LIMIT_HEADERS),
      ...apiErrors(SESSION_ERRORS, BODY_ERRORS, {
        400: ['invalid_request', 'model_not_found', 'invalid_idempotency_key', 'context_length_exceeded'],
        402: ['insufficient_balance'],
        409: ['session_not_active', 'idempotency_key_conflict'],
        503: ['shutting_down'],
      }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/api/sessions/{id}/requests/{requestId}',
    operationId: 'getSessionRequest',
    tags,
    summary: 'Poll a request',
    description: 'The request as it is now: `result` is the text so far while it runs.',
    security: bearer,
    request: { params: requestIds },
    responses: { 200: ok('The request.', json(SessionRequest), ...RATE_LIMIT_HEADERS), ...apiErrors(SESSION_ERRORS) },
  });

  r.registerPath({
    method: 'get',
    path: '/api/sessions/{id}/requests/{requestId}/stream',
    operationId: 'streamSessionRequest',
    tags,
    summary: 'Stream a request (SSE, resumable)',
    description: STREAM_DESCRIPTION,
    security: bearerOrQuery,
    request: { params: requestIds, headers: cursorHeaders, query: cursorQuery },
    responses: {
      200: ok('The stream.', sse(RunFrames)),
      204: ok('The run has ended and the cursor is at its final event: nothing more will come (EventSource stops reconnecting).'),
      ...apiErrors(SESSION_ERRORS, STREAM_ERRORS),
    },
  });
}
