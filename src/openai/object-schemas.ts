import { z } from 'zod';
import { frame } from '../openapi/registry.js';

/**
 * The objects the `/v1` face answers with, as the OpenAPI document describes them: the shapes of the `openai`
 * SDK (6.x) that `response-object.ts`, `chat-map.ts`, `items.ts` and the routes build, plus the `sluice`
 * extension key. OpenAI's API reference documents the rest of each object's meaning. The contract test parses
 * real answers with them and fails on any field they do not list.
 */

const seconds = (description: string) => z.int().meta({ description });
/**
 * Always empty here (no annotations, no logprobs, no tools). Typed as `never[]`, which any list type of the SDK
 * accepts (test/sdk-shapes.typecheck.ts); described as an empty array (the document generator knows no `never`).
 */
const empty = z.array(z.unknown()).max(0) as unknown as z.ZodArray<z.ZodNever>;

const outputText = z.object({ type: z.literal('output_text'), text: z.string(), annotations: empty, logprobs: empty });

/** The assistant message of a response (its one output item). */
export const OutputMessage = z
  .object({
    id: z.string().meta({ description: '`msg_…`' }),
    type: z.literal('message'),
    role: z.literal('assistant'),
    status: z.enum(['in_progress', 'completed', 'incomplete']),
    content: z.array(outputText),
  })
  .meta({ id: 'OutputMessage' });

const responseUsage = z.object({
  input_tokens: z.int(),
  input_tokens_details: z.object({ cached_tokens: z.int(), cache_write_tokens: z.int() }),
  output_tokens: z.int(),
  output_tokens_details: z.object({ reasoning_tokens: z.int() }),
  total_tokens: z.int(),
});

export const ResponseObject = z
  .object({
    id: z.string().meta({ description: '`resp_<run id without dashes>`: the response is a run (`GET /api/runs/{runId}`).' }),
    object: z.literal('response'),
    created_at: seconds('Unix seconds.'),
    model: z.string(),
    instructions: z.string().nullable(),
    max_output_tokens: z.int().nullable(),
    metadata: z.record(z.string(), z.string()),
    previous_response_id: z.string().nullable(),
    conversation: z.object({ id: z.string() }).nullable(),
    background: z.boolean(),
    store: z.boolean(),
    parallel_tool_calls: z.literal(false),
    temperature: z.null(),
    top_p: z.null(),
    tool_choice: z.literal('none'),
    tools: empty,
    text: z.object({ format: z.object({ type: z.literal('text') }) }),
    truncation: z.literal('disabled'),
    reasoning: z.null(),
    status: z.enum(['queued', 'in_progress', 'completed', 'incomplete', 'failed', 'cancelled']),
    completed_at: seconds('Unix seconds, once ended.').nullable(),
    error: z.object({ code: z.enum(['server_error', 'rate_limit_exceeded']), message: z.string() }).nullable(),
    incomplete_details: z.object({ reason: z.enum(['max_output_tokens', 'content_filter']) }).nullable(),
    output: z.array(OutputMessage),
    usage: responseUsage.nullable(),
    sluice: z
      .object({
        run_id: z.string().meta({ format: 'uuid' }),
        debited_sats: z.int(),
        charged_sats: z.int().nullable().meta({ description: 'null until it ends' }),
        refunded_sats: z.int().nullable().meta({ description: 'null until it ends' }),
        multitask_strategy: z.string().optional(),
        error_code: z.string().optional(),
      })
      .meta({ description: 'Sluice’s extension: the run behind the response and its money.' }),
  })
  .meta({ id: 'Response', description: 'An OpenAI Response object (see OpenAI’s API reference), of the run that serves it.' });

export const ResponseDeleted = z.object({ id: z.string(), object: z.literal('response'), deleted: z.literal(true) }).meta({ id: 'ResponseDeleted' });

/**
 * A stored message item (`input_items`, conversation items): an input message (user or system text), or an
 * assistant's message (its output text), as the SDK's `ResponseItem` has them.
 */
export const MessageItem = z
  .union([
    z.object({
      id: z.string(),
      type: z.literal('message'),
      role: z.enum(['user', 'system']),
      status: z.literal('completed'),
      content: z.array(z.object({ type: z.literal('input_text'), text: z.string() })),
    }),
    z.object({ id: z.string(), type: z.literal('message'), role: z.literal('assistant'), status: z.literal('completed'), content: z.array(outputText) }),
  ])
  .meta({ id: 'MessageItem' });

export const ItemList = z
  .object({ object: z.literal('list'), data: z.array(MessageItem), first_id: z.string().nullable(), last_id: z.string().nullable(), has_more: z.boolean() })
  .meta({ id: 'ItemList' });

export const Conversation = z
  .object({ id: z.string().meta({ description: '`conv_…`' }), object: z.literal('conversation'), created_at: seconds('Unix seconds.'), metadata: z.record(z.string(), z.string()) })
  .meta({ id: 'Conversation' });

export const ConversationDeleted = z.object({ id: z.string(), object: z.literal('conversation.deleted'), deleted: z.literal(true) }).meta({ id: 'ConversationDeleted' });

const finish = z.enum(['stop', 'length', 'content_filter']);
const chatUsage = z.object({
  prompt_tokens: z.int(),
  completion_tokens: z.int(),
  total_tokens: z.int(),
  prompt_tokens_details: z.object({ cached_tokens: z.int() }),
  completion_tokens_details: z.object({ reasoning_tokens: z.int() }),
});
const chatMoney = z
  .object({
    run_id: z.string().meta({ format: 'uuid' }),
    state: z.enum(['complete', 'cancelled', 'interrupted', 'failed']),
    debited_sats: z.int(),
    charged_sats: z.int(),
    refunded_sats: z.int(),
  })
  .meta({ description: 'Sluice’s extension: the run behind the completion and its money.' });

export const ChatCompletion = z
  .object({
    id: z.string().meta({ description: '`chatcmpl-<run id without dashes>`' }),
    object: z.literal('chat.completion'),
    created: seconds('Unix seconds.'),
    model: z.string(),
    choices: z.array(
      z.object({
        index: z.literal(0),
        message: z.object({ role: z.literal('assistant'), content: z.string(), refusal: z.null(), annotations: empty }),
        finish_reason: finish,
        logprobs: z.null(),
      }),
    ),
    usage: chatUsage,
    system_fingerprint: z.null(),
    sluice: chatMoney,
  })
  .meta({ id: 'ChatCompletion', description: 'An OpenAI `chat.completion` (see OpenAI’s API reference).' });

export const ChatCompletionChunk = z
  .object({
    id: z.string(),
    object: z.literal('chat.completion.chunk'),
    created: seconds('Unix seconds.'),
    model: z.string(),
    system_fingerprint: z.null(),
    choices: z.array(
      z.object({
        index: z.literal(0),
        delta: z.object({ role: z.literal('assistant').optional(), content: z.string().optional() }),
        finish_reason: finish.nullable(),
        logprobs: z.null(),
      }),
    ),
    usage: chatUsage.nullable().optional().meta({ description: 'With `stream_options.include_usage`: null on every chunk but the last, which has no choices.' }),
    sluice: chatMoney.optional(),
  })
  .meta({ id: 'ChatCompletionChunk' });

export const Model = z
  .object({
    id: z.string(),
    object: z.literal('model'),
    created: seconds('When the catalogue was loaded (Unix seconds).'),
    owned_by: z.string(),
    sluice: z.object({
      input_sats_per_1k: z.number(),
      output_sats_per_1k: z.number(),
      max_output_tokens: z.int(),
      context_tokens: z.int(),
      default: z.boolean().meta({ description: 'The model a request without `model` gets.' }),
    }),
  })
  .meta({ id: 'Model' });

export const ModelList = z.object({ object: z.literal('list'), data: z.array(Model) }).meta({ id: 'ModelList' });

// ---------------------------------------------------------------------------------------------------------------
// Streams

const seq = z.int().min(0).meta({ description: 'The `sequence_number`, also the frame’s `id:`: resume after it.' });
const at = { item_id: z.string(), output_index: z.literal(0), content_index: z.literal(0) };
const responseEvent = <const T extends readonly [string, ...string[]], F extends z.ZodRawShape>(types: T, fields: F, description: string) =>
  frame(types, z.object({ type: z.enum(types), ...fields, sequence_number: z.int().min(0) }), seq, description);

export const ResponseStreamFrames = z
  .union([
    responseEvent(
      ['response.created', 'response.in_progress', 'response.completed', 'response.incomplete', 'response.failed'],
      { response: ResponseObject },
      '`response.created` (0) and `response.in_progress` (1) open the stream; it ends with `response.completed`, `response.incomplete` (max tokens, content filter — or a cancelled response, with `response.status: "cancelled"`) or `response.failed`.',
    ),
    responseEvent(['response.output_item.added', 'response.output_item.done'], { output_index: z.literal(0), item: OutputMessage }, 'The assistant message (2, and 5 + F).'),
    responseEvent(
      ['response.content_part.added', 'response.content_part.done'],
      { ...at, part: outputText },
      'Its `output_text` part (3, and 4 + F).',
    ),
    responseEvent(['response.output_text.delta'], { ...at, delta: z.string(), logprobs: empty }, 'A token (3 + s, for the token with seq s in the run’s log).'),
    responseEvent(['response.output_text.done'], { ...at, text: z.string(), logprobs: empty }, 'The whole text (3 + F, for the final event with seq F).'),
    frame(
      'error',
      z.object({ type: z.literal('error'), code: z.literal('stream_resync'), message: z.string(), param: z.null(), sequence_number: z.int() }),
      'none',
      'The reader fell behind and is disconnected: resume with `starting_after` = `sequence_number`. Has no `id:`.',
    ),
  ])
  .meta({ id: 'ResponseStreamEvent' });

const chatStreamError = z.object({ error: z.object({ message: z.string(), type: z.string(), param: z.null(), code: z.string().nullable() }) });
export const ChatStreamFrames = z
  .union([
    frame(null, ChatCompletionChunk, 'none', 'A chunk: the first carries the role, the last content chunk the `finish_reason`; with `include_usage` a usage chunk (no choices) follows.'),
    frame(null, chatStreamError, 'none', 'The model failed mid-stream (refunded), or the reader fell behind (`stream_resync`); the stream then ends.'),
    frame(null, z.literal('[DONE]'), 'none', 'The end (the text `[DONE]`, not JSON).'),
  ])
  .meta({ id: 'ChatCompletionStreamFrame' });
