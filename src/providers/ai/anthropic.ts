import Anthropic from '@anthropic-ai/sdk';
import { failure, httpFailure, transportFailure, type ProviderFailure } from './failures.js';
import type { AiChunk, AiMessage, AiProvider, AiRequest, AiStopReason } from './types.js';

export interface AnthropicOptions {
  /** Default `https://api.anthropic.com` (the SDK appends `/v1/messages`). */
  baseURL?: string;
  apiKey: string;
  /** The SDK's own limit on waiting for response headers: set above the first-token timeout, which rules. */
  headersTimeoutMs: number;
}

/**
 * Claude through `@anthropic-ai/sdk`'s Messages streaming (`messages.create({stream: true})`: the raw event
 * stream; the SDK's `MessageStream` helper would only accumulate a message we do not need):
 *
 * - system messages go in `system` (joined by a blank line, in order); consecutive messages of one role are
 *   merged, and empty ones dropped (the API refuses empty text blocks);
 * - `message_start` carries the input count (input + cache creation + cache read tokens), yielded at once so a
 *   run stopped mid-reply is charged the provider's input; each `text_delta` is a token; `message_delta`
 *   carries the stop reason and the cumulative output count; `ping` is skipped (by the SDK); `event: error`
 *   inside the stream (`overloaded_error`…) is thrown by the SDK and classified like an HTTP error;
 * - `stop_reason` `end_turn`, `stop_sequence` → stop; `max_tokens`, `model_context_window_exceeded` →
 *   max_tokens; `refusal` → content_filter; `tool_use`, `pause_turn` (no tools are sent) and any other → stop;
 * - a stream that ends with neither `message_delta`'s stop reason nor `message_stop` was cut: before a token
 *   `provider_unavailable` (retried), after one `provider_disconnected`.
 *
 * The key is passed explicitly (so the SDK reads no ANTHROPIC_* credential variable); SDK 1.x sends it as
 * `Authorization: Bearer` with `anthropic-version: 2026-10-21`.
 */
export function createAnthropicProvider(opts: AnthropicOptions): Pick<AiProvider, 'name' | 'stream'> {
  const client = new Anthropic({
    apiKey: opts.apiKey,
    baseURL: opts.baseURL ?? 'https://api.anthropic.com',
    maxRetries: 0,
    timeout: opts.headersTimeoutMs,
    logLevel: 'off',
  });
  const secrets = [opts.apiKey];

  async function* stream(req: AiRequest, signal: AbortSignal): AsyncGenerator<AiChunk> {
    const { system, messages } = toAnthropicMessages(req.messages);
    let upstream: AsyncIterable<Anthropic.Messages.RawMessageStreamEvent>;
    try {
      upstream = await client.messages.create({ model: req.model, max_tokens: req.maxTokens, messages, ...(system ? { system } : {}), stream: true }, { signal });
    } catch (err) {
      signal.throwIfAborted();
      throw classify(err, false, secrets);
    }
    let produced = false;
    let ended = false;
    let finish: AiStopReason = 'stop';
    let inputTokens: number | null = null;
    let outputTokens: number | null = null;
    try {
      for await (const event of upstream) {
        if (event.type === 'message_start') {
          const u = event.message.usage;
          inputTokens = (u.input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0);
          yield { type: 'usage', inputTokens };
        } else if (event.type === 'content_block_delta') {
          if (event.delta.type === 'text_delta' && event.delta.text) {
            produced = true;
            yield { type: 'token', content: event.delta.text };
          }
        } else if (event.type === 'message_delta') {
          const u = event.usage;
          if (u.input_tokens != null) inputTokens = u.input_tokens + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0);
          outputTokens = u.output_tokens;
          if (event.delta.stop_reason) {
            finish = stopReason(event.delta.stop_reason);
            ended = true;
          }
        } else if (event.type === 'message_stop') {
          ended = true;
        }
      }
    } catch (err) {
      signal.throwIfAborted();
      throw classify(err, produced, secrets);
    }
    signal.throwIfAborted();
    if (!ended) {
      throw produced
        ? failure('provider_disconnected', { retryable: false, detail: 'the stream ended before message_stop' })
        : failure('provider_unavailable', { retryable: true, detail: 'the stream ended before any content' });
    }
    if (inputTokens !== null && outputTokens !== null) yield { type: 'usage', inputTokens, outputTokens };
    yield { type: 'finish', reason: finish };
  }

  return { name: 'anthropic', stream };
}

/** Our messages as the Messages API takes them: system apart, one role at a time, no empty text. */
export function toAnthropicMessages(input: readonly AiMessage[]): { system?: string; messages: Array<{ role: 'user' | 'assistant'; content: string }> } {
  const system = input
    .filter((m) => m.role === 'system' && m.content.trim())
    .map((m) => m.content)
    .join('\n\n');
  const messages: Array<{ role: 'user' | 'assistant'; content: string }> = [];
  for (const m of input) {
    if (m.role === 'system' || !m.content.trim()) continue;
    const last = messages.at(-1);
    if (last?.role === m.role) last.content += `\n\n${m.content}`;
    else messages.push({ role: m.role, content: m.content });
  }
  // Instructions alone (a chat of one system message): the API needs a message, so they become the user's.
  if (messages.length === 0 && system) return { messages: [{ role: 'user', content: system }] };
  return { ...(system ? { system } : {}), messages };
}

function stopReason(reason: string): AiStopReason {
  if (reason === 'max_tokens' || reason === 'model_context_window_exceeded') return 'max_tokens';
  if (reason === 'refusal') return 'content_filter';
  return 'stop';
}

/** An SDK error as a ProviderFailure: HTTP and in-stream errors by status, `error.type` and `error.details.error_code`. */
function classify(err: unknown, produced: boolean, secrets: readonly string[]): ProviderFailure {
  if (err instanceof Anthropic.APIError && !(err instanceof Anthropic.APIConnectionError)) {
    return httpFailure({
      status: err.status,
      type: err.type,
      code: err.errorCode,
      message: err.apiMessage ?? err.message,
      headers: err.headers,
      requestId: err.requestID,
      secrets,
    });
  }
  return transportFailure(err, produced, secrets);
}
