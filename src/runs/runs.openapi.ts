import { z } from 'zod';
import { Run, RunCancelling, RunPage } from '../openapi/api-objects.js';
import { cursorHeaders, cursorQuery, uuidParam } from '../openapi/params.js';
import { BODY_ERRORS, RATE_LIMIT_HEADERS, SESSION_ERRORS, STREAM_ERRORS, apiErrors, bearer, bearerOrQuery, json, ok, sse, type Registry } from '../openapi/registry.js';
import { RunStreamFrames, STREAM_DESCRIPTION } from '../openapi/run-events.js';
import { runsListQuery } from './runs.schemas.js';

const runId = z.object({ runId: uuidParam('The run id: a session request’s `requestId`, or the uuid inside a `/v1` id (`resp_<uuid without dashes>`).') });

/** The runs routes (`runs.routes.ts`), described with the schemas they validate with. */
export function describeRuns(r: Registry): void {
  const tags = ['Runs'];
  r.registerPath({
    method: 'get',
    path: '/api/runs',
    operationId: 'listRuns',
    tags,
    summary: 'List the session’s runs',
    description: 'Every piece of AI work the session paid for (its requests, and its `/v1` responses and chat completions), newest first.',
    security: bearer,
    request: { query: runsListQuery },
    responses: {
      200: ok('A page of runs.', json(RunPage), ...RATE_LIMIT_HEADERS),
      ...apiErrors({ 400: ['invalid_request', 'invalid_cursor'], 401: ['unauthorized'], 429: ['rate_limited'] }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/api/runs/{runId}',
    operationId: 'getRun',
    tags,
    summary: 'Read a run',
    security: bearer,
    request: { params: runId },
    responses: { 200: ok('The run.', json(Run), ...RATE_LIMIT_HEADERS), ...apiErrors(SESSION_ERRORS) },
  });

  r.registerPath({
    method: 'get',
    path: '/api/runs/{runId}/stream',
    operationId: 'streamRun',
    tags,
    summary: 'Stream a run (SSE, resumable)',
    description: `${STREAM_DESCRIPTION}\n\nThe first frame is \`event: run\` with the run's id and state, without an \`id:\`.`,
    security: bearerOrQuery,
    request: { params: runId, headers: cursorHeaders, query: cursorQuery },
    responses: {
      200: ok('The stream.', sse(RunStreamFrames)),
      204: ok('The run has ended and the cursor is at its final event.'),
      ...apiErrors(SESSION_ERRORS, STREAM_ERRORS),
    },
  });

  r.registerPath({
    method: 'post',
    path: '/api/runs/{runId}/stop',
    operationId: 'stopRun',
    tags,
    summary: 'Stop a run',
    description:
      'A queued or executing run is stopped (its provider call aborted, or — held by another process — flagged in Postgres for its owner): it ends `cancelled`, keeps its output, is charged for the tokens produced and refunds the rest. Stopping an ended run is harmless.',
    security: bearer,
    request: { params: runId },
    responses: {
      200: ok('The run had already ended: it is returned as it is.', json(Run), ...RATE_LIMIT_HEADERS),
      202: ok('Stopping: the run will end `cancelled` (watch its stream or poll it).', json(RunCancelling), ...RATE_LIMIT_HEADERS),
      // It reads no body, but one sent is parsed like any other (before the route): not JSON, or too large, is refused.
      ...apiErrors(SESSION_ERRORS, BODY_ERRORS),
    },
  });

  r.registerPath({
    method: 'delete',
    path: '/api/runs/{runId}',
    operationId: 'deleteRun',
    tags,
    summary: 'Forget a finished run',
    description: 'Its input, output and events are deleted. Its ledger rows stay: money history is never deleted.',
    security: bearer,
    request: { params: runId },
    responses: { 204: ok('Deleted.', undefined, ...RATE_LIMIT_HEADERS), ...apiErrors(SESSION_ERRORS, { 409: ['run_active'] }) },
  });
}
