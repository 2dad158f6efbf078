import { z } from 'zod';
import { apiErrors, bearerOrQuery, ok, type DocContext, type Registry } from '../openapi/registry.js';
import { AuthMessage, ServerMessages, StopRun, SubscribeRun, SubscribeSession, UnsubscribeRun, UnsubscribeSession } from './socket-messages.js';

const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });

/** A message schema as a Schema Object: zod's JSON Schema of it (which files it under its `id`). */
function jsonSchemaOf(id: string, schema: z.ZodType, io: 'input' | 'output') {
  const out = z.toJSONSchema(schema, { target: 'draft-2020-12', io }) as { $defs?: Record<string, object> };
  return out.$defs![id]! as never;
}

/**
 * `GET /api/ws` (socket.routes.ts). OpenAPI describes HTTP, not what flows over a socket once it is open: the
 * handshake and its refusals are the operation; the messages are schemas of their own (`Ws…` under
 * components/schemas, registered here from the very zod schemas the server parses them with), listed by direction in
 * the operation's `x-websocket-messages`.
 */
export function describeSocket(r: Registry, d: DocContext): void {
  const c = d.config;
  const client = { WsAuth: AuthMessage, WsSubscribeRun: SubscribeRun, WsSubscribeSession: SubscribeSession, WsUnsubscribeRun: UnsubscribeRun, WsUnsubscribeSession: UnsubscribeSession, WsStop: StopRun };
  const server: Record<string, z.ZodType> = {};
  for (const schema of Object.values(ServerMessages)) server[(schema.meta() as { id: string }).id] = schema;
  // zod's own JSON Schema (2020-12, OpenAPI 3.1's dialect) of each: a client message as it is parsed (input), a server one as sent.
  for (const [id, schema] of Object.entries(client)) r.registerComponent('schemas', id, jsonSchemaOf(id, schema, 'input'));
  for (const [id, schema] of Object.entries(server)) r.registerComponent('schemas', id, jsonSchemaOf(id, schema, 'output'));

  r.registerPath({
    method: 'get',
    path: '/api/ws',
    operationId: 'webSocket',
    tags: ['Runs'],
    summary: 'Watch many runs over one WebSocket',
    description: `Upgrade to a WebSocket (\`Upgrade: websocket\`, on the same port), then speak JSON, one message per text frame. One socket carries any number of run subscriptions (up to WS_MAX_SUBSCRIPTIONS, here ${c.WS_MAX_SUBSCRIPTIONS}) and the session's notices — what would take one SSE connection per run, which a browser on HTTP/1.1 caps at 6 per origin.

**Authenticate** with \`?access_token=\` (or \`Authorization: Bearer\`) on the upgrade — a bad token is refused here, over HTTP — or with the first message \`{"type":"auth","token"}\` within WS_AUTH_TIMEOUT_MS (${c.WS_AUTH_TIMEOUT_MS} ms; else close 1008). The server answers \`authenticated\`. A refused first-message token closes the socket with 4401 (4429 when a limit is reached).

**Client → server:** \`subscribe {runId, after?}\` (every event after \`after\`, exactly once and in order, then the live ones, ending with the final event — the SSE stream's events and ids; answered \`subscribed {runId, state}\`), \`subscribe {session: true}\` (a \`run {runId, state}\` notice when a run of the session is created, starts or ends), \`unsubscribe {runId}\` / \`{session: true}\`, \`stop {runId}\` (answered \`stopping\`). Subscribe and stop count against the session's request budget.

**Server → client:** \`event {runId, seq, event, data}\`, \`subscribed\`, \`unsubscribed\` (also when a subscription ends with nothing to send), \`stopping\`, \`run\`, \`resync {runId, lastSeq}\` (the socket fell behind: WS_MAX_BUFFERED_BYTES unread; that subscription is dropped — subscribe again with \`after: lastSeq\`), \`error {code, message, runId?}\` with the HTTP API's codes (another session's run is \`not_found\`, as a missing one). A bad message is answered \`error\`; the socket stays open.

**Limits:** the socket is one of its client IP's SSE_MAX_STREAMS_PER_IP and one of its session's SESSION_MAX_STREAMS streams; it is pinged every SSE_PING_MS and closed if it misses a pong; a message over WS_MAX_MESSAGE_BYTES closes it (1009). At shutdown the server closes sockets with 1001.`,
    security: bearerOrQuery,
    responses: {
      101: ok('Switching Protocols: the WebSocket is open. The messages are described in `x-websocket-messages` and under `components/schemas` (`Ws…`).'),
      ...apiErrors({ 401: ['unauthorized'], 403: ['origin_not_allowed'], 426: ['upgrade_required'], 429: ['rate_limited', 'too_many_streams'] }),
    },
    'x-websocket-messages': {
      client: { oneOf: Object.keys(client).map(ref) },
      server: { oneOf: Object.keys(server).map(ref) },
    },
  });
}
