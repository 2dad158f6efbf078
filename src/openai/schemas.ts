import { z } from 'zod';
import { storableText } from '../http/validate.js';
import type { AiMessage } from '../providers/ai/types.js';
import { invalidRequest } from './errors.js';

/**
 * The request bodies of the /v1 face, after the `openai` SDK's types (6.x). Fields this server does not act on
 * (temperature, top_p, user, include, …) are accepted and ignored, as a compatible server must; features it
 * cannot honour (tools, non-text content) are refused by name rather than silently dropped.
 */

/** Text Postgres can store (no NUL, no lone surrogate) — a 400 here rather than a 500 later. */
const text = (what: string) =>
  z
    .string({ error: `${what} must be a string` })
    .refine((s) => !s.includes('\u0000'), `${what} must not contain NUL characters`)
    .refine(storableText, `${what} must be valid Unicode text`);

const metadata = z
  .record(text('a metadata key').pipe(z.string().max(64, 'metadata keys are at most 64 characters')), text('a metadata value').pipe(z.string().max(512, 'metadata values are at most 512 characters')))
  .refine((m) => Object.keys(m).length <= 16, 'metadata holds at most 16 pairs');

const textPart = (types: readonly [string, ...string[]]) =>
  z.object({
    type: z.enum(types, { error: `only text content is supported (type must be ${types.join(' or ')})` }),
    text: text('text'),
  });

/** A message item of `input` (or of a conversation's `items`): text content only. */
const inputMessage = z.object({
  type: z.literal('message', { error: 'only message items are supported in input' }).optional(),
  role: z.enum(['user', 'assistant', 'system', 'developer'], { error: 'role must be user, assistant, system or developer' }),
  content: z.union([text('content'), z.array(textPart(['input_text', 'output_text'])).min(1, 'content must not be empty')]),
});
type InputMessage = z.infer<typeof inputMessage>;

const noTools = z.array(z.unknown()).max(0, 'tools are not supported by this server').nullish();
/** With no tools, only a choice that calls none means anything; `required` or a named tool cannot be honoured. */
const noToolChoice = z.enum(['none', 'auto'], { error: 'tools are not supported by this server (tool_choice may be none or auto)' }).nullish();
/**
 * Plain text output only. A structured output (`json_schema`, `json_object`) answered with prose would break its
 * client later and obscurely (the SDK's `responses.parse` fails to parse it), so it is refused here by name.
 */
const textOnly = (what: string) =>
  z.object({ type: z.literal('text', { error: `only text output is supported by this server (${what} json_schema and json_object are not)` }) }).loose();
const positive = (what: string) => z.number({ error: `${what} must be a number` }).int(`${what} must be a whole number`).min(1, `${what} must be at least 1`);

export const multitaskStrategies = ['reject', 'enqueue', 'interrupt'] as const;

export const responseCreateBody = z.object({
  model: z.string({ error: 'model must be a string' }).min(1).max(200).optional(),
  input: z.union([text('input').pipe(z.string().min(1, 'input must not be empty')), z.array(inputMessage).min(1, 'input must not be empty')], {
    error: 'input must be a string or a list of message items',
  }),
  instructions: text('instructions').nullish(),
  max_output_tokens: positive('max_output_tokens').nullish(),
  stream: z.boolean().nullish(),
  background: z.boolean().nullish(),
  store: z.boolean().nullish(),
  previous_response_id: z.string().nullish(),
  conversation: z.union([z.string(), z.object({ id: z.string() })]).nullish(),
  metadata: metadata.nullish(),
  /** Sluice's extension: what a second request does while a response of its conversation is active. */
  multitask_strategy: z.enum(multitaskStrategies, { error: `multitask_strategy must be one of ${multitaskStrategies.join(', ')}` }).optional(),
  tools: noTools,
  tool_choice: noToolChoice,
  text: z.object({ format: textOnly('text.format').nullish() }).loose().nullish(),
});
export type ResponseCreateBody = z.infer<typeof responseCreateBody>;

const MAX_SEQUENCE = 2 ** 31 - 1;

export const retrieveQuery = z.object({
  stream: z.enum(['true', 'false'], { error: 'stream must be true or false' }).meta({ description: '`true`: stream the Response events (SSE) instead of the object.' }).optional(),
  // Digits only: a bare coercion read `starting_after=` and ` ` as 0 (skipping `response.created`) and `0x10` as 16.
  starting_after: z
    .string({ error: 'starting_after must be an integer' })
    .regex(/^\d{1,10}$/, 'starting_after must be an integer')
    .transform(Number)
    .pipe(z.number().max(MAX_SEQUENCE, `starting_after must be at most ${MAX_SEQUENCE}`))
    // Spelled out: the document generator would describe the string the pipe reads, not the integer it means.
    .meta({ type: 'integer', minimum: 0, maximum: MAX_SEQUENCE, description: 'With `stream=true`: resume after this `sequence_number`.' })
    .optional(),
});

export const listQuery = z.object({
  after: z.string().max(200).meta({ description: 'The last item id of the previous page.' }).optional(),
  limit: z.coerce.number({ error: 'limit must be a number' }).int().min(1, 'limit must be between 1 and 100').max(100, 'limit must be between 1 and 100').default(20),
  order: z.enum(['asc', 'desc'], { error: 'order must be asc or desc' }).default('desc'),
});

export const conversationCreateBody = z
  .object({
    items: z.array(inputMessage).max(1000, 'at most 1000 items').nullish(),
    metadata: metadata.nullish(),
  })
  .nullish();

export const conversationUpdateBody = z.object({ metadata: metadata.nullable() });

const chatMessage = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant'], { error: 'role must be system, developer, user or assistant (tools are not supported)' }),
  content: z.union([text('content'), z.array(textPart(['text'])).min(1, 'content must not be empty')], { error: 'content must be text' }),
  name: z.string().optional(),
});

export const chatCreateBody = z.object({
  model: z.string({ error: 'model must be a string' }).min(1).max(200).optional(),
  messages: z.array(chatMessage, { error: 'messages must be a list' }).min(1, 'messages must not be empty'),
  max_tokens: positive('max_tokens').nullish(),
  max_completion_tokens: positive('max_completion_tokens').nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  n: z.literal(1, { error: 'n must be 1: this server makes one choice per request' }).nullish(),
  tools: noTools,
  tool_choice: noToolChoice,
  response_format: textOnly('response_format').nullish(),
});
export type ChatCreateBody = z.infer<typeof chatCreateBody>;

/** Parse a /v1 input, or a 400 naming the param as OpenAI does (`input[0].content`). */
export function parseV1<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issue = deepest(result.error.issues[0]!);
  const param = issue.path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '');
  throw invalidRequest(param ? `Invalid value for '${param}': ${issue.message}` : issue.message, param || null);
}

/**
 * A union that failed reports its own path (`input`); the branch that got furthest names the real culprit
 * (`input[0].content`), so that is the issue a client is told about.
 */
function deepest(issue: z.core.$ZodIssue): { path: PropertyKey[]; message: string } {
  if (issue.code !== 'invalid_union') return issue;
  let best: { path: PropertyKey[]; message: string } = issue;
  let depth = 0;
  for (const branch of issue.errors) {
    if (!branch[0]) continue;
    const inner = deepest(branch[0]);
    // At equal depth, a branch that took the value's type and refused its content (a NUL in a string) says
    // more than the union's own "must be a string or a list".
    const better = inner.path.length > depth || (inner.path.length === depth && best === issue && branch[0].code !== 'invalid_type' && branch[0].code !== 'invalid_union');
    if (better) {
      depth = inner.path.length;
      best = { path: [...issue.path, ...inner.path], message: inner.message };
    }
  }
  return best;
}

/** An input message's text (parts joined) and the role a provider understands (developer is system). */
export function toAiMessage(m: { role: InputMessage['role']; content: string | Array<{ text: string }> }): AiMessage {
  const content = typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
  return { role: m.role === 'developer' ? 'system' : m.role, content };
}

/** `input` as this turn's messages. */
export function turnOf(input: ResponseCreateBody['input']): AiMessage[] {
  return typeof input === 'string' ? [{ role: 'user', content: input }] : input.map(toAiMessage);
}
