import { randomBytes } from 'node:crypto';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { DEFAULT_CHUNKS, requestId, sendJson, sseWriter, startFakeHttp, type ErrorPlan, type Exchange, type FakeHttp, type ReplyPlan } from './llm-http.js';

/**
 * A local OpenAI Chat Completions server, streaming as api.openai.com does (OpenAI's API reference, "Create chat
 * completion" and "The chat completion chunk object"; openai-node 6.x `src/core/streaming.ts` for how a client
 * reads it):
 *
 * - `POST /v1/chat/completions` with `Authorization: Bearer <key>`; a wrong or missing key is `401` with code
 *   `invalid_api_key` and the key masked in the message, an unknown model `404` `model_not_found`;
 * - the answer: `200`, `content-type: text/event-stream; charset=utf-8`, `x-request-id`, `openai-version`,
 *   `openai-processing-ms` and the `x-ratelimit-*` headers; then one `data: {json}\n\n` per chunk — first the
 *   role (`delta: {role: "assistant", content: "", refusal: null}`), then `delta: {content}` per text chunk,
 *   then `delta: {}` with `finish_reason` (`stop`, `length`, `content_filter`), then (with
 *   `stream_options.include_usage`) a chunk with `choices: []` and the usage; every other chunk has
 *   `"usage": null`; each carries an `obfuscation` padding string, as OpenAI's do since 2025; then `data: [DONE]\n\n`;
 * - errors in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`, a 429 with `retry-after`;
 *   an error inside the stream as `data: {"error": {…}}`.
 *
 * Its usage is its own count, as OpenAI's is: `prompt_tokens` is o200k_base over the messages plus 3 a message,
 * 1 a role and 3 to prime the reply; `completion_tokens` o200k_base over the text streamed.
 */
export interface FakeOpenAi extends FakeHttp {
  /** The key it accepts. */
  apiKey: string;
  /** Usage it reported, per completed request (in order). */
  usages: Array<{ prompt_tokens: number; completion_tokens: number }>;
}

export const SERVED_MODEL = 'gpt-4o-mini-2024-07-18';

/** Its `prompt_tokens` for these messages: o200k_base, 3 a message and 1 a role, 3 to prime the reply. */
export const promptTokens = (messages: Array<{ content: unknown }>) => messages.reduce((n: number, m) => n + countTokens(String(m.content), { disallowedSpecial: new Set() }) + 4, 3);

/** `keyless`: a local server that asks for no key (Ollama, llama.cpp's server, vLLM without --api-key). */
export async function startFakeOpenAi(opts: { apiKey: string; models?: string[]; keyless?: boolean }): Promise<FakeOpenAi> {
  const models = new Set(opts.models ?? ['gpt-4o-mini']);
  const usages: FakeOpenAi['usages'] = [];
  const http = await startFakeHttp(async (x) => {
    const id = requestId();
    const common = { 'x-request-id': id, 'openai-version': '2020-10-01', 'openai-organization': 'user-fake', 'openai-processing-ms': '12' };
    const fail = (status: number, message: string, type: string, code: string | null, param: string | null = null, headers: Record<string, string> = {}) =>
      sendJson(x.res, status, { error: { message, type, param, code } }, { ...common, ...headers });
    if (x.req.method !== 'POST' || x.req.path !== '/v1/chat/completions') return fail(404, `Invalid URL (${x.req.method} ${x.req.path})`, 'invalid_request_error', null);
    const auth = String(x.req.headers.authorization ?? '');
    const key = auth.slice(7);
    if (opts.keyless) {
      // Asks for no key, checks none.
    } else if (!auth.startsWith('Bearer ')) {
      return fail(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", 'invalid_request_error', null);
    } else if (key !== opts.apiKey) return fail(401, `Incorrect API key provided: ${mask(key)}. You can find your API key at https://platform.openai.com/account/api-keys.`, 'invalid_request_error', 'invalid_api_key');
    const body = x.req.body as { model?: unknown; messages?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown } } | undefined;
    if (!body || typeof body.model !== 'string') return fail(400, 'you must provide a model parameter', 'invalid_request_error', null);
    if (!Array.isArray(body.messages) || body.messages.length === 0) return fail(400, "[] is too short - 'messages'", 'invalid_request_error', null, 'messages');
    if (!models.has(body.model)) return fail(404, `The model \`${body.model}\` does not exist or you do not have access to it.`, 'invalid_request_error', 'model_not_found');
    if (x.plan.type === 'error') return sendError(x.plan, key, fail);
    if (body.stream !== true) return fail(400, 'this fake streams only: send "stream": true', 'invalid_request_error', null, 'stream');
    return stream(x, x.plan, body.messages as Array<{ content: string }>, body.stream_options?.include_usage === true, common, usages);
  });
  return { ...http, apiKey: opts.apiKey, usages };
}

/** OpenAI's mask: the first 3 characters, stars, the last 4. */
const mask = (key: string) => (key.length > 7 ? `${key.slice(0, 3)}${'*'.repeat(Math.max(4, key.length - 7))}${key.slice(-4)}` : '****');

function sendError(plan: ErrorPlan, key: string, fail: (s: number, m: string, t: string, c: string | null, p?: string | null, h?: Record<string, string>) => void) {
  const retry: Record<string, string> = plan.retryAfter ? { 'retry-after': plan.retryAfter } : {};
  switch (plan.error) {
    case 'rate_limit':
      return fail(
        plan.status,
        'Rate limit reached for gpt-4o-mini in organization org-f4k3 on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more.',
        'requests',
        'rate_limit_exceeded',
        null,
        { ...retry, 'x-ratelimit-limit-requests': '3', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' },
      );
    case 'server':
      return fail(plan.status, 'The server had an error while processing your request. Sorry about that!', 'server_error', null, null, retry);
    case 'overloaded':
      return fail(plan.status, 'The engine is currently overloaded, please try again later.', 'server_error', null, null, retry);
    case 'context_length':
      return fail(plan.status, "This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.", 'invalid_request_error', 'context_length_exceeded', 'messages');
    case 'model_not_found':
      return fail(plan.status, 'The model `gpt-4o-mini` does not exist or you do not have access to it.', 'invalid_request_error', 'model_not_found');
    case 'echo_key':
      return fail(plan.status, `Invalid API key: Bearer ${key}`, 'invalid_request_error', 'invalid_api_key');
  }
}

async function stream(x: Exchange, plan: ReplyPlan, messages: Array<{ content: string }>, includeUsage: boolean, common: Record<string, string>, usages: FakeOpenAi['usages']) {
  const chunks = plan.chunks ?? DEFAULT_CHUNKS;
  x.res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, must-revalidate',
    'access-control-expose-headers': 'X-Request-ID',
    'x-ratelimit-limit-requests': '10000',
    'x-ratelimit-remaining-requests': '9999',
    'x-ratelimit-limit-tokens': '200000',
    'x-ratelimit-remaining-tokens': '199900',
    ...common,
  });
  const w = sseWriter(x, plan.gapMs ?? 2);
  const id = `chatcmpl-${randomBytes(15).toString('base64url')}`;
  const created = Math.floor(Date.now() / 1000);
  const data = (choices: unknown[], usage: unknown = null) =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: SERVED_MODEL, service_tier: 'default', system_fingerprint: 'fp_560af6e559', choices, usage, obfuscation: randomBytes(4).toString('base64url') })}\n\n`;
  const choice = (delta: object, finish: string | null = null) => ({ index: 0, delta, logprobs: null, finish_reason: finish });

  await w.send(data([choice({ role: 'assistant', content: '', refusal: null })]));
  let text = '';
  for (let i = 0; i <= chunks.length; i++) {
    if (plan.stallAfter === i) return w.stall();
    if (plan.cutAfter === i) return w.cut(plan.cutHow ?? 'reset');
    if (plan.errorAfter === i) {
      await w.send(`data: ${JSON.stringify({ error: { message: 'The server had an error while processing your request. Sorry about that!', type: 'server_error', param: null, code: null } })}\n\n`);
      return w.end();
    }
    if (i === chunks.length || w.gone) break;
    text += chunks[i];
    await w.send(data([choice({ content: chunks[i] })]));
  }
  const prompt = promptTokens(messages);
  const completion = countTokens(text, { disallowedSpecial: new Set() });
  const usage = {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  };
  const finish = plan.stop === 'max_tokens' ? 'length' : (plan.stop ?? 'stop');
  // Only asked-for usage is sent (some servers put it on the finish chunk regardless: `with-finish`).
  const mode = plan.usage === 'with-finish' ? 'with-finish' : includeUsage ? (plan.usage ?? 'separate') : 'none';
  await w.send(data([choice({}, finish)], mode === 'with-finish' ? usage : null));
  if (mode === 'separate') await w.send(data([], usage));
  if (mode !== 'none') usages.push(usage);
  await w.send('data: [DONE]\n\n');
  w.end();
}
