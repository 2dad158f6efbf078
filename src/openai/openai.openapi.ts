import { z } from 'zod';
import { cursorHeaders, idempotencyHeaders } from '../openapi/params.js';
import { RATE_LIMIT_HEADERS, bearer, bearerOrQuery, json, jsonBody, ok, sse, type DocContext, type Registry, type Responses } from '../openapi/registry.js';
import {
  ChatCompletion,
  ChatStreamFrames,
  Conversation,
  ConversationDeleted,
  ItemList,
  Model,
  ModelList,
  ResponseDeleted,
  ResponseObject,
  ResponseStreamFrames,
} from './object-schemas.js';
import { chatCreateBody, conversationCreateBody, conversationUpdateBody, listQuery, responseCreateBody, retrieveQuery } from './schemas.js';

/** OpenAI's error envelope, which the `openai` SDK turns into its own error classes by status. */
const OpenAiErrorBody = z
  .object({
    error: z.object({
      message: z.string(),
      type: z.string().meta({ description: '`invalid_request_error`, `insufficient_quota`, `requests` (a rate limit) or `server_error`.' }),
      param: z.string().nullable().meta({ description: 'The field at fault, e.g. `input[0].content`.' }),
      code: z.string().nullable(),
    }),
  })
  .meta({ id: 'OpenAIError' });

const STATUS: Record<number, string> = {
  400: 'Bad request (`BadRequestError`)',
  401: 'Unauthorized (`AuthenticationError`)',
  404: 'Not found (`NotFoundError`)',
  409: 'Conflict (`ConflictError`)',
  413: 'Payload too large',
  429: 'Too many requests (`RateLimitError`)',
  502: 'The model failed (refunded in full, but for the text a reply cut mid-stream had already delivered: `provider_disconnected`)',
  503: 'Unavailable: retry',
};

/**
 * The `/v1` error responses of an operation: OpenAI's envelope, with the `code`s each status can carry. Every
 * 4xx but a rate limit says `x-should-retry: false`; a 429 or 503 says when to come back.
 */
function openAiErrors(byStatus: Partial<Record<number, string>>): Responses {
  const all: Partial<Record<number, string>> = {
    401: '`invalid_api_key` (an unknown key), or no `code` when there is no key at all.',
    429: '`insufficient_quota` (type `insufficient_quota`): the session cannot pay (no balance, unpaid, expired) — top it up. `rate_limit_exceeded` or `too_many_streams` (type `requests`): a limit of Sluice’s (requests a minute, streams open per session or per client); the SDK waits `Retry-After` and retries.',
    ...byStatus,
  };
  // Every /v1 operation reads Postgres: while it cannot be reached, a retryable 503 (type `server_error`).
  all[503] = [all[503], '`database_unavailable`: the database cannot be reached right now; the SDK retries after `Retry-After`.'].filter(Boolean).join(' ');
  const out: Responses = {};
  for (const [status, codes] of Object.entries(all)) {
    const s = Number(status);
    const headers = s === 429 ? ['Retry-After', ...RATE_LIMIT_HEADERS] : s === 503 ? ['Retry-After'] : s < 500 ? ['x-should-retry'] : [];
    out[s] = ok(`${STATUS[s]}: ${codes}`, json(OpenAiErrorBody), ...headers);
  }
  return out;
}

const BAD_BODY = 'the body failed validation (no `code`; `param` names the field, e.g. `input[0].content`), or is not JSON;';
const TOO_LARGE = { 413: '`payload_too_large`: the body is over V1_BODY_LIMIT_KB.' };
const responseId = z.object({ id: z.string().meta({ description: '`resp_…`', example: 'resp_3f1c…' }) });
const conversationId = z.object({ id: z.string().meta({ description: '`conv_…`' }) });

/** The OpenAI face (`/v1`, `openai.routes.ts`), described as far as it matters to a client; OpenAI's API reference has the rest. */
export function describeOpenAi(r: Registry, { config: c, defaultModel: model }: DocContext): void {
  const responses = ['Responses'];
  r.registerPath({
    method: 'post',
    path: '/v1/responses',
    operationId: 'createResponse',
    tags: responses,
    summary: 'Create a response',
    description: `OpenAI's Responses API over a run of the session (its balance pays; it shows in \`GET /api/runs\`). Three modes: \`background: true\` answers at once (\`queued\`); \`stream: true\` is an SSE stream of Response events, numbered from the run's log so any reader resumes exactly; neither waits for the run (never for the provider directly) and answers the finished Response. \`store: false\` makes it ephemeral: a disconnect cancels it and it is deleted when it ends. \`model\` defaults to the catalogue's default; \`max_output_tokens\` to DEFAULT_MAX_TOKENS (${c.DEFAULT_MAX_TOKENS}). Unsupported features (tools, non-text content) are a 400 naming the param; fields that change nothing here (temperature, top_p, user, …) are accepted and ignored.`,
    security: bearer,
    request: {
      headers: idempotencyHeaders,
      body: jsonBody(responseCreateBody, {
        text: { summary: 'A question', value: { model, input: 'Tell me about sluice gates' } },
        stream: { summary: 'Streamed', value: { model, input: 'A long story about a canal', stream: true } },
        background: { summary: 'In the background (poll or stream it later)', value: { model, input: 'Summarise the history of locks', background: true } },
        messages: {
          summary: 'Messages and instructions',
          value: { model, instructions: 'Answer in one sentence.', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is a weir?' }] }], max_output_tokens: 64 },
        },
        conversation: { summary: 'A turn of a conversation, queued behind an active one', value: { model, input: 'And then?', conversation: 'conv_…', multitask_strategy: 'enqueue' } },
      }),
    },
    responses: {
      200: ok('The Response (finished, or `queued` with `background`), or its event stream with `stream: true`.', { ...json(ResponseObject), ...sse(ResponseStreamFrames) }, 'Idempotent-Replayed', ...RATE_LIMIT_HEADERS),
      ...openAiErrors({
        400: `${BAD_BODY} \`previous_response_not_found\`, \`previous_response_not_completed\`, \`context_length_exceeded\`, \`invalid_idempotency_key\`.`,
        404: '`model_not_found`; an unknown `conversation`.',
        409: '`conversation_busy` (its conversation has an active response and `multitask_strategy` is `reject`), `idempotency_key_conflict`.',
        ...TOO_LARGE,
        503: '`shutting_down`.',
      }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/v1/responses/{id}',
    operationId: 'getResponse',
    tags: responses,
    summary: 'Retrieve a response, or stream it from any point',
    description:
      'The Response as it is now (the text so far while it runs). With `stream=true`: every Response event after `starting_after` (or `Last-Event-ID`), then the live ones; no cursor: the whole stream from `response.created` (what the SDK’s `responses.stream({response_id})` needs). A finished response replays and closes. A browser’s EventSource may pass the key as `?access_token=`.',
    security: bearerOrQuery,
    request: { params: responseId, query: retrieveQuery, headers: cursorHeaders },
    responses: {
      200: ok('The Response, or (with `stream=true`) its events.', { ...json(ResponseObject), ...sse(ResponseStreamFrames) }, ...RATE_LIMIT_HEADERS),
      ...openAiErrors({ 400: 'a malformed `starting_after` or `Last-Event-ID`.', 404: 'no such response of this session (or one created with `store: false`).' }),
    },
  });

  r.registerPath({
    method: 'post',
    path: '/v1/responses/{id}/cancel',
    operationId: 'cancelResponse',
    tags: responses,
    summary: 'Cancel a response',
    description: 'Stops a live response like a run stop (charged for what it produced, the rest refunded) and returns it `cancelled`; a finished one is returned as it is, so cancelling twice is harmless.',
    security: bearer,
    request: { params: responseId },
    // It reads no body, but one sent is parsed like any other (before the route): not JSON, or too large, is refused.
    responses: { 200: ok('The Response.', json(ResponseObject), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 400: 'a body was sent and is not JSON.', ...TOO_LARGE, 404: 'no such response.' }) },
  });

  r.registerPath({
    method: 'delete',
    path: '/v1/responses/{id}',
    operationId: 'deleteResponse',
    tags: responses,
    summary: 'Delete a response',
    description: 'Like a run delete: its input, output and events go; its ledger rows stay.',
    security: bearer,
    request: { params: responseId },
    responses: { 200: ok('Deleted.', json(ResponseDeleted), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 404: 'no such response.', 409: '`response_active`: cancel it first.' }) },
  });

  r.registerPath({
    method: 'get',
    path: '/v1/responses/{id}/input_items',
    operationId: 'listResponseInputItems',
    tags: responses,
    summary: 'A response’s input items',
    description: 'Its own input messages (not the history it carried over), cursor-paginated.',
    security: bearer,
    request: { params: responseId, query: listQuery },
    responses: { 200: ok('A page of items.', json(ItemList), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 400: '`after` names no item of the list.', 404: 'no such response.' }) },
  });

  const conversations = ['Conversations'];
  r.registerPath({
    method: 'post',
    path: '/v1/conversations',
    operationId: 'createConversation',
    tags: conversations,
    summary: 'Create a conversation',
    description: 'A thread whose responses carry its history: its items, then each completed response’s input and output. One active response at a time (see `multitask_strategy`).',
    security: bearer,
    request: {
      body: {
        required: false,
        content: json(conversationCreateBody, {
          empty: { summary: 'An empty conversation', value: {} },
          seeded: { summary: 'With a first message and metadata', value: { items: [{ role: 'system', content: 'You are terse.' }], metadata: { topic: 'canals' } } },
        }),
      },
    },
    responses: { 200: ok('The conversation.', json(Conversation), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 400: BAD_BODY, ...TOO_LARGE }) },
  });

  r.registerPath({
    method: 'get',
    path: '/v1/conversations/{id}',
    operationId: 'getConversation',
    tags: conversations,
    summary: 'Retrieve a conversation',
    security: bearer,
    request: { params: conversationId },
    responses: { 200: ok('The conversation.', json(Conversation), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 404: 'no such conversation of this session.' }) },
  });

  r.registerPath({
    method: 'post',
    path: '/v1/conversations/{id}',
    operationId: 'updateConversation',
    tags: conversations,
    summary: 'Update a conversation’s metadata',
    security: bearer,
    request: { params: conversationId, body: jsonBody(conversationUpdateBody, { metadata: { summary: 'Replace its metadata', value: { metadata: { topic: 'locks' } } } }) },
    responses: { 200: ok('The conversation.', json(Conversation), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 400: BAD_BODY, 404: 'no such conversation.', ...TOO_LARGE }) },
  });

  r.registerPath({
    method: 'delete',
    path: '/v1/conversations/{id}',
    operationId: 'deleteConversation',
    tags: conversations,
    summary: 'Delete a conversation',
    security: bearer,
    request: { params: conversationId },
    responses: {
      200: ok('Deleted.', json(ConversationDeleted), ...RATE_LIMIT_HEADERS),
      ...openAiErrors({ 404: 'no such conversation.', 409: '`conversation_busy`: a response of it is still active.' }),
    },
  });

  r.registerPath({
    method: 'get',
    path: '/v1/conversations/{id}/items',
    operationId: 'listConversationItems',
    tags: conversations,
    summary: 'A conversation’s items',
    description: 'Its initial items, then each completed response’s input and output: exactly the context its next response sees.',
    security: bearer,
    request: { params: conversationId, query: listQuery },
    responses: { 200: ok('A page of items.', json(ItemList), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 400: '`after` names no item of the list.', 404: 'no such conversation.' }) },
  });

  r.registerPath({
    method: 'post',
    path: '/v1/chat/completions',
    operationId: 'createChatCompletion',
    tags: ['Chat'],
    summary: 'Create a chat completion',
    description:
      'The face every OpenAI-compatible tool speaks, over the same runs. The messages are the whole context. Non-stream waits on the run. Stream: `data:` chunks, then `data: [DONE]`; the protocol has no resume, so a disconnect stops the run (charged for what was produced) — except a replay of an idempotent request, which only detaches.',
    security: bearer,
    request: {
      headers: idempotencyHeaders,
      body: jsonBody(chatCreateBody, {
        chat: { summary: 'A chat turn', value: { model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is a sluice?' }] } },
        stream: { summary: 'Streamed, with a usage chunk', value: { model, messages: [{ role: 'user', content: 'Count to five' }], stream: true, stream_options: { include_usage: true } } },
      }),
    },
    responses: {
      200: ok('The completion, or (with `stream: true`) its chunks.', { ...json(ChatCompletion), ...sse(ChatStreamFrames) }, 'Idempotent-Replayed', ...RATE_LIMIT_HEADERS),
      ...openAiErrors({
        400: `${BAD_BODY} both \`max_tokens\` and \`max_completion_tokens\`; \`context_length_exceeded\`; \`invalid_idempotency_key\`.`,
        404: '`model_not_found`; the completion of a replayed `Idempotency-Key` was deleted.',
        409: '`idempotency_key_conflict`.',
        ...TOO_LARGE,
        502: 'the AI provider’s code (e.g. `provider_error`).',
        503: '`shutting_down`; `interrupted` (a restart interrupted the run; refunded).',
      }),
    },
  });

  const models = ['Model catalogue'];
  r.registerPath({
    method: 'get',
    path: '/v1/models',
    operationId: 'listModels',
    tags: models,
    summary: 'List the catalogue',
    description: 'Every model, with its prices under the `sluice` key.',
    security: bearer,
    responses: { 200: ok('The models.', json(ModelList), ...RATE_LIMIT_HEADERS), ...openAiErrors({}) },
  });

  r.registerPath({
    method: 'get',
    path: '/v1/models/{name}',
    operationId: 'getModel',
    tags: models,
    summary: 'Retrieve a model',
    security: bearer,
    request: { params: z.object({ name: z.string().meta({ description: 'The model’s name; it may hold slashes (`meta-llama/Llama-3.1-8B`): the rest of the path is the name.', example: model }) }) },
    responses: { 200: ok('The model.', json(Model), ...RATE_LIMIT_HEADERS), ...openAiErrors({ 404: '`model_not_found`.' }) },
  });
}
