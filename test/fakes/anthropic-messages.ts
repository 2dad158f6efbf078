import { randomBytes, randomUUID } from 'node:crypto';
import { countTokens } from 'gpt-tokenizer/encoding/cl100k_base';
import { DEFAULT_CHUNKS, requestId, sendJson, sseWriter, startFakeHttp, type ErrorPlan, type Exchange, type FakeHttp, type ReplyPlan } from './llm-http.js';

/**
 * A local Anthropic Messages API, streaming as api.anthropic.com does (Anthropic's API reference, "Messages",
 * "Streaming Messages" and "Errors"; @anthropic-ai/sdk 1.x `src/core/streaming.ts`, `src/lib/MessageStream.ts`
 * and `src/resources/messages/messages.ts` for how a client reads it):
 *
 * - `POST /v1/messages` with the key and `anthropic-version`: `x-api-key` with `2023-06-01`, or `Authorization:
 *   Bearer` with `2026-10-21` (what SDK 1.x sends: its `apiKeyAuth` is a bearer header since that API version);
 *   a missing or wrong key is `401 authentication_error`, a missing or unknown version `400
 *   invalid_request_error`, a missing `max_tokens` or an empty text block `400`, an unknown model `404
 *   not_found_error`;
 * - the answer: `200`, `content-type: text/event-stream; charset=utf-8`, `request-id`,
 *   `anthropic-organization-id`; then `event: <type>\ndata: {json}\n\n` events: `message_start` (the message
 *   shell with `usage.input_tokens`, `output_tokens: 1`), `content_block_start` (an empty text block), `ping`,
 *   `content_block_delta` (`text_delta`) per text chunk, `content_block_stop`, `message_delta` (`stop_reason`
 *   `end_turn`, `max_tokens` or `refusal`, and the cumulative usage), `message_stop`;
 * - errors as `{"type": "error", "error": {"type", "message"}, "request_id"}` — `rate_limit_error` (429, with
 *   `retry-after`), `api_error` (500), `overloaded_error` (529) — and inside a stream as `event: error`.
 *
 * Its usage is its own count, as Anthropic's is (Claude's tokenizer is not public): 1.2 × cl100k_base over the
 * text, plus 4 a message and 4 — what Sluice's Claude estimate (×1.75) must bound.
 */
export interface FakeAnthropic extends FakeHttp {
  apiKey: string;
  usages: Array<{ input_tokens: number; output_tokens: number }>;
}

export const API_VERSIONS = ['2023-06-01', '2026-10-21'];

const claudeCount = (text: string) => Math.ceil(countTokens(text, { disallowedSpecial: new Set() }) * 1.2);

/** Its `input_tokens` for a request body: 1.2 × cl100k_base over the system prompt and messages, 4 a message, 4. */
export function inputTokens(body: { system?: unknown; messages?: Array<{ content: unknown }> }): number {
  const messages = body.messages ?? [];
  const texts = [typeof body.system === 'string' ? body.system : '', ...messages.map((m) => String(m.content))];
  return texts.reduce((n, t) => n + claudeCount(t), 0) + 4 * messages.length + 4;
}

export async function startFakeAnthropic(opts: { apiKey: string; models?: string[] }): Promise<FakeAnthropic> {
  const models = new Set(opts.models ?? ['claude-haiku-4-5']);
  const usages: FakeAnthropic['usages'] = [];
  const http = await startFakeHttp(async (x) => {
    const id = requestId();
    const common = { 'request-id': id, 'anthropic-organization-id': randomUUID() };
    const fail = (status: number, type: string, message: string, headers: Record<string, string> = {}) =>
      sendJson(x.res, status, { type: 'error', error: { type, message }, request_id: id }, { ...common, ...headers });
    if (x.req.method !== 'POST' || x.req.path !== '/v1/messages') return fail(404, 'not_found_error', 'Not Found');
    const bearer = /^Bearer (.+)$/.exec(String(x.req.headers.authorization ?? ''))?.[1];
    const key = x.req.headers['x-api-key'] ?? bearer;
    if (!key) return fail(401, 'authentication_error', 'x-api-key header is required');
    if (key !== opts.apiKey) return fail(401, 'authentication_error', 'invalid x-api-key');
    const version = x.req.headers['anthropic-version'];
    if (!version) return fail(400, 'invalid_request_error', 'anthropic-version: header is required');
    if (!API_VERSIONS.includes(String(version))) return fail(400, 'invalid_request_error', `anthropic-version: unknown version ${JSON.stringify(version)}`);
    const body = x.req.body as { model?: unknown; max_tokens?: unknown; messages?: Array<{ role: string; content: unknown }>; system?: unknown; stream?: unknown } | undefined;
    if (!body || typeof body.model !== 'string') return fail(400, 'invalid_request_error', 'model: Field required');
    if (typeof body.max_tokens !== 'number' || body.max_tokens < 1) return fail(400, 'invalid_request_error', 'max_tokens: Field required');
    if (!Array.isArray(body.messages) || body.messages.length === 0) return fail(400, 'invalid_request_error', 'messages: at least one message is required');
    for (const [i, m] of body.messages.entries()) {
      if (m.role !== 'user' && m.role !== 'assistant') return fail(400, 'invalid_request_error', `messages.${i}.role: Input should be 'user' or 'assistant'`);
      if (typeof m.content !== 'string' || !m.content.trim()) return fail(400, 'invalid_request_error', `messages.${i}: text content blocks must contain non-whitespace text`);
    }
    if (!models.has(body.model)) return fail(404, 'not_found_error', `model: ${body.model}`);
    if (body.stream !== true) return fail(400, 'invalid_request_error', 'this fake streams only: send "stream": true');
    if (x.plan.type === 'error') return sendError(x.plan, String(key), fail);
    return stream(x, x.plan, body.model, inputTokens(body), common, usages);
  });
  return { ...http, apiKey: opts.apiKey, usages };
}

function sendError(plan: ErrorPlan, key: string, fail: (s: number, t: string, m: string, h?: Record<string, string>) => void) {
  const retry: Record<string, string> = plan.retryAfter ? { 'retry-after': plan.retryAfter } : {};
  switch (plan.error) {
    case 'rate_limit':
      return fail(
        plan.status,
        'rate_limit_error',
        'This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.',
        { ...retry, 'anthropic-ratelimit-requests-limit': '50', 'anthropic-ratelimit-requests-remaining': '0', 'anthropic-ratelimit-requests-reset': new Date(Date.now() + 1000).toISOString() },
      );
    case 'server':
      return fail(plan.status, 'api_error', 'Internal server error', retry);
    case 'overloaded':
      return fail(plan.status, 'overloaded_error', 'Overloaded', retry);
    case 'context_length':
      return fail(plan.status, 'invalid_request_error', 'prompt is too long: 208384 tokens > 200000 maximum');
    case 'model_not_found':
      return fail(plan.status, 'not_found_error', 'model: claude-haiku-4-5');
    case 'echo_key':
      return fail(plan.status, 'authentication_error', `invalid x-api-key: ${key}`);
  }
}

async function stream(x: Exchange, plan: ReplyPlan, model: string, inputTokens: number, common: Record<string, string>, usages: FakeAnthropic['usages']) {
  const chunks = plan.chunks ?? DEFAULT_CHUNKS;
  x.res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-robots-tag': 'none', ...common });
  const w = sseWriter(x, plan.gapMs ?? 2);
  const event = (type: string, data: object) => w.send(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  const cacheFree = { cache_creation_input_tokens: 0, cache_read_input_tokens: 0 };
  await event('message_start', {
    message: {
      model,
      id: `msg_01${randomBytes(16).toString('base64url').slice(0, 22)}`,
      type: 'message',
      role: 'assistant',
      content: [],
      stop_reason: null,
      stop_sequence: null,
      stop_details: null,
      usage: { input_tokens: inputTokens, ...cacheFree, cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 }, output_tokens: 1, service_tier: 'standard' },
    },
  });
  await event('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
  await event('ping', {});
  let text = '';
  for (let i = 0; i <= chunks.length; i++) {
    if (plan.stallAfter === i) return w.stall();
    if (plan.cutAfter === i) return w.cut(plan.cutHow ?? 'reset');
    if (plan.errorAfter === i) {
      await w.send(`event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' }, request_id: common['request-id'] })}\n\n`);
      return w.end();
    }
    if (i === chunks.length || w.gone) break;
    text += chunks[i];
    await event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: chunks[i] } });
  }
  await event('content_block_stop', { index: 0 });
  const outputTokens = Math.max(1, claudeCount(text));
  const stop = plan.stop === 'content_filter' ? 'refusal' : plan.stop === 'max_tokens' ? 'max_tokens' : 'end_turn';
  await event('message_delta', { delta: { stop_reason: stop, stop_sequence: null, stop_details: null }, usage: { input_tokens: inputTokens, ...cacheFree, output_tokens: outputTokens } });
  await event('message_stop', {});
  usages.push({ input_tokens: inputTokens, output_tokens: outputTokens });
  w.end();
}
