import { z } from 'zod';
import { UUID } from '../http/validate.js';
import { RUN_STATES } from './runs.schemas.js';

/**
 * The WebSocket protocol of `GET /api/ws`: JSON, one message per text frame. The client's messages are parsed with
 * these schemas, and the OpenAPI document describes both directions with them (socket.openapi.ts).
 */

const runId = z.string({ error: 'runId must be a string' }).regex(UUID, 'runId must be a run id (a UUID)').meta({ format: 'uuid', description: 'The run (any case: answers name it in lower case, as the API does).' });
const cursor = z
  .number({ error: 'after must be a number' })
  .int('after must be a whole number')
  .min(0, 'after must be at least 0')
  .max(2 ** 31 - 1, 'after is too large')
  .meta({ description: 'Resume: only events with `seq` greater than this (the last `seq` you have). Default 0: from the first event.' });

export const AuthMessage = z
  .object({ type: z.literal('auth'), token: z.string({ error: 'token must be a string' }).min(1, 'token must not be empty').max(500, 'token is too long') })
  .meta({ id: 'WsAuth', description: 'Authenticate with the session token: the first message, unless the socket was opened with `?access_token=`.' });

export const SubscribeRun = z
  .object({ type: z.literal('subscribe'), runId, after: cursor.optional() })
  .meta({ id: 'WsSubscribeRun', description: 'Follow a run: every event after `after`, exactly once and in order, then the live ones, ending with its final event.' });

export const SubscribeSession = z
  .object({ type: z.literal('subscribe'), session: z.literal(true) })
  .meta({ id: 'WsSubscribeSession', description: 'Session notices: a `run` message whenever a run of the session is created, starts or ends.' });

export const UnsubscribeRun = z
  .object({ type: z.literal('unsubscribe'), runId })
  .meta({ id: 'WsUnsubscribeRun', description: 'Stop following a run. The run goes on; subscribe again with `after` to resume.' });

export const UnsubscribeSession = z.object({ type: z.literal('unsubscribe'), session: z.literal(true) }).meta({ id: 'WsUnsubscribeSession', description: 'Stop the session notices.' });

export const StopRun = z.object({ type: z.literal('stop'), runId }).meta({ id: 'WsStop', description: 'Stop a run, as `POST /api/runs/{runId}/stop`.' });

export const ClientMessage = z.union([AuthMessage, SubscribeRun, SubscribeSession, UnsubscribeRun, UnsubscribeSession, StopRun]);
export type ClientMessage = z.infer<typeof ClientMessage>;

/** The client's message types, for a clear answer to an unknown one. */
export const CLIENT_TYPES = ['auth', 'subscribe', 'unsubscribe', 'stop'] as const;

/**
 * The schema of a message by its type (and, for the two that have two forms, by whether it names the session): so
 * a bad field is reported as itself, not as "matches none of six shapes".
 */
export function schemaOf(type: (typeof CLIENT_TYPES)[number], raw: object): z.ZodType<ClientMessage> {
  const session = 'session' in raw;
  if (type === 'auth') return AuthMessage;
  if (type === 'subscribe') return session ? SubscribeSession : SubscribeRun;
  if (type === 'unsubscribe') return session ? UnsubscribeSession : UnsubscribeRun;
  return StopRun;
}

const state = z.enum(RUN_STATES);

export const ServerMessages = {
  authenticated: z
    .object({ type: z.literal('authenticated'), sessionId: z.string().meta({ format: 'uuid' }), maxSubscriptions: z.int() })
    .meta({ id: 'WsAuthenticated', description: 'The socket is authenticated (sent once, whichever way it was).' }),
  subscribed: z
    .object({ type: z.literal('subscribed'), runId: z.string().meta({ format: 'uuid' }).optional(), session: z.literal(true).optional(), state: state.optional() })
    .meta({ id: 'WsSubscribed', description: 'A subscription is in place: for a run, with its state when subscribed (its events follow); or the session notices.' }),
  event: z
    .object({
      type: z.literal('event'),
      runId: z.string().meta({ format: 'uuid' }),
      seq: z.int().min(1),
      event: z.enum(['token', 'done', 'error']),
      data: z.unknown().meta({ description: 'Exactly the `data` of the SSE event with this `id` (TokenEvent, DoneEvent, FailedEvent).' }),
    })
    .meta({ id: 'WsEvent', description: 'An event of the run’s log: `seq` is its SSE `id`. After `done` or `error` the subscription ends by itself.' }),
  resync: z
    .object({ type: z.literal('resync'), runId: z.string().meta({ format: 'uuid' }).optional(), session: z.literal(true).optional(), lastSeq: z.int() })
    .meta({
      id: 'WsResync',
      description:
        'The socket fell behind (WS_MAX_BUFFERED_BYTES unread, or SSE_MAX_QUEUE events of one run): that subscription is dropped. Subscribe again with `after: lastSeq`. With `session: true`, the session notices were dropped (re-subscribe, and list the runs to catch up).',
    }),
  unsubscribed: z
    .object({ type: z.literal('unsubscribed'), runId: z.string().meta({ format: 'uuid' }).optional(), session: z.literal(true).optional() })
    .meta({ id: 'WsUnsubscribed', description: 'The answer to `unsubscribe`.' }),
  stopping: z
    .object({ type: z.literal('stopping'), runId: z.string().meta({ format: 'uuid' }), state: z.enum([...RUN_STATES, 'cancelling']) })
    .meta({ id: 'WsStopping', description: 'The answer to `stop`: `cancelling` (it will end `cancelled`: its final event says so), or the state of a run that had already ended.' }),
  run: z
    .object({ type: z.literal('run'), runId: z.string().meta({ format: 'uuid' }), state })
    .meta({ id: 'WsRunNotice', description: 'A session notice: a run of the session was created, started, or ended in `state`.' }),
  error: z
    .object({
      type: z.literal('error'),
      code: z.string().meta({ description: 'The same codes as the HTTP API (`invalid_request`, `invalid_json`, `unauthorized`, `not_found`, `rate_limited`, …).' }),
      message: z.string(),
      runId: z.string().optional(),
      details: z.unknown().optional(),
    })
    .meta({ id: 'WsError', description: 'A message was refused (the socket stays open), or — before a close — why the socket is closed.' }),
};

export const ServerMessage = z.union(Object.values(ServerMessages) as unknown as [z.ZodType, z.ZodType, ...z.ZodType[]]);
