import { z } from 'zod';
import { RUN_STATES } from '../runs/runs.schemas.js';
import { frame } from './registry.js';

/**
 * The SSE frames of the `/api` streams (a session request's, a run's, a job's): each is `id: <seq>` (when the
 * event is in the run's log), `event: <name>` and `data: <JSON>`. Described as `{id, event, data}` objects, the
 * convention OpenAPI code generators read for `text/event-stream`.
 */

const usage = z.object({ inputTokens: z.int(), outputTokens: z.int() });
const money = { debitedSats: z.int(), chargedSats: z.int(), refundedSats: z.int() };

export const TokenFrame = frame('token', z.object({ content: z.string() }), 'seq', 'A piece of the reply. `result` is exactly the tokens joined.').meta({ id: 'TokenEvent' });

export const DoneFrame = frame(
  'done',
  z.object({
    state: z.enum(['complete', 'cancelled', 'interrupted']),
    result: z.string(),
    ...money,
    usage,
    completedAt: z.iso.datetime({ offset: true }).nullable(),
    stopReason: z.string().nullable().meta({ description: '`stop`, `max_tokens` or `content_filter` once complete.' }),
  }),
  'seq',
  'The last event of a run that ended without failing (complete, stopped, or interrupted by a restart and refunded). The server then closes the stream.',
).meta({ id: 'DoneEvent' });

export const FailedFrame = frame(
  'error',
  z.object({
    state: z.literal('failed'),
    code: z.string(),
    message: z.string(),
    result: z.string().optional(),
    debitedSats: z.int().optional(),
    chargedSats: z.int().optional(),
    refundedSats: z.int(),
    usage: usage.optional(),
    completedAt: z.iso.datetime({ offset: true }).nullable().optional(),
  }),
  'seq',
  'The last event of a run that failed (refunded). The server then closes the stream.',
).meta({ id: 'FailedEvent' });

export const ResyncFrame = frame(
  'resync',
  z.object({ lastEventId: z.int(), message: z.string() }),
  'none',
  'The reader fell too far behind (SSE_MAX_QUEUE events) and is disconnected: reconnect with `Last-Event-ID: lastEventId`. Has no `id:`.',
).meta({ id: 'ResyncEvent' });

export const RunStateFrame = frame(
  'run',
  z.object({ runId: z.string().meta({ format: 'uuid' }), state: z.enum(RUN_STATES) }),
  'none',
  'The first frame of `GET /api/runs/{runId}/stream`: what the run is. Has no `id:`, so it never moves a cursor.',
).meta({ id: 'RunStateEvent' });

export const JobWaitFrame = frame(
  'error',
  z.object({
    state: z.enum(['rejected', 'expired', 'awaiting_eval_payment', 'evaluating', 'awaiting_work_payment']),
    code: z.enum(['rejected', 'invoice_expired', 'payment_timeout', 'evaluation_timeout']),
    message: z.string(),
    reason: z.string().nullable().optional(),
  }),
  'none',
  'A job stream that cannot start: the job was rejected (`rejected`), its invoice expired (`invoice_expired`), or it is still unpaid (`payment_timeout`) or being evaluated (`evaluation_timeout`) after JOB_STREAM_WAIT_S — reconnect to keep waiting. Has no `id:`.',
).meta({ id: 'JobWaitErrorEvent' });

/** Every frame of a session request's stream. */
export const RunFrames = z.union([TokenFrame, DoneFrame, FailedFrame, ResyncFrame]);
/** A run's stream: its state first, then the run's events. */
export const RunStreamFrames = z.union([RunStateFrame, TokenFrame, DoneFrame, FailedFrame, ResyncFrame]);
/** A job's stream: the run's events, or one frame saying why there is no run to stream yet. */
export const JobFrames = z.union([TokenFrame, DoneFrame, FailedFrame, ResyncFrame, JobWaitFrame]);

/** What every `/api` stream's description says about resuming. */
export const STREAM_DESCRIPTION = `Server-Sent Events (\`text/event-stream\`): \`retry:\` on connect, a \`: ping\` comment every 15 s, then the run's events, each with \`id:\` = its \`seq\` in the run's log (1, 2, 3, …), ending with \`done\` or \`error\`, after which the server closes the stream.

Resume with \`Last-Event-ID: N\` (what \`EventSource\` sends when it reconnects) or \`?starting_after=N\`: every event after N, exactly once, in order, then the live ones. Reconnecting after the final event gets \`204\`, which tells \`EventSource\` to stop. Closing the stream only detaches you: the run goes on. A browser passes the token as \`?access_token=\`.`;
