import OpenAI from 'openai';
import { failure, httpFailure, transportFailure, type ProviderFailure } from './failures.js';
import type { AiChunk, AiProvider, AiRequest, AiStopReason } from './types.js';

export interface OpenAiCompatibleOptions {
  /** The server's `/v1` base, e.g. `https://api.openai.com/v1`, `http://localhost:11434/v1` (Ollama). */
  baseURL: string;
  /** Its key; null for a server that needs none (no `Authorization` header is sent then). */
  apiKey: string | null;
  /** The SDK's own limit on waiting for response headers: set above the first-token timeout, which rules. */
  headersTimeoutMs: number;
}

/**
 * Chat Completions streaming through the official `openai` SDK, so OpenAI itself and every server that speaks it
 * (vLLM, Ollama, llama.cpp's server, LiteLLM, OpenRouter) work:
 *
 * - the request is `{model, messages, max_tokens | max_completion_tokens, stream: true, stream_options:
 *   {include_usage: true}}` — `max_completion_tokens` for api.openai.com (its reasoning models refuse
 *   `max_tokens`), `max_tokens` elsewhere (what every compatible server reads);
 * - each non-empty `delta.content` (or `delta.refusal`) of choice 0 is a token; `usage` is read from whichever
 *   chunk carries it (OpenAI: a last chunk with `choices: []`; vLLM: `choices: null`; some servers: on the
 *   `finish_reason` chunk) and the last one wins; a server that sends none leaves the charge to the estimate;
 * - `finish_reason` `stop` → stop, `length` → max_tokens, `content_filter` → content_filter; `tool_calls` and
 *   `function_call` (no tools are sent, so they do not happen) and any other value → stop;
 * - a stream that ends without any `finish_reason` was cut (the SDK ends quietly at a clean EOF, `[DONE]` or
 *   not): before a token it is `provider_unavailable` (retried), after one `provider_disconnected`.
 *
 * Aborting `signal` aborts the SDK's fetch, which closes the connection. Retries and timeouts are the
 * resilience wrapper's (`maxRetries: 0` here); the SDK logs nothing (`logLevel: 'off'`), so a key can never
 * reach a log through it.
 */
export function createOpenAiCompatibleProvider(opts: OpenAiCompatibleOptions): Pick<AiProvider, 'name' | 'stream'> {
  const client = new OpenAI({
    baseURL: opts.baseURL,
    // The SDK insists on a key; a keyless server gets none on the wire (a null header is removed).
    apiKey: opts.apiKey ?? 'unused',
    ...(opts.apiKey === null ? { defaultHeaders: { Authorization: null } } : {}),
    maxRetries: 0,
    timeout: opts.headersTimeoutMs,
    logLevel: 'off',
  });
  const secrets = opts.apiKey ? [opts.apiKey] : [];
  const maxParam = new URL(opts.baseURL).hostname === 'api.openai.com' ? 'max_completion_tokens' : 'max_tokens';

  async function* stream(req: AiRequest, signal: AbortSignal): AsyncGenerator<AiChunk> {
    let upstream: AsyncIterable<OpenAI.Chat.Completions.ChatCompletionChunk>;
    try {
      upstream = await client.chat.completions.create(
        {
          model: req.model,
          messages: req.messages.map((m) => ({ role: m.role, content: m.content })),
          [maxParam]: req.maxTokens,
          stream: true,
          stream_options: { include_usage: true },
        },
        { signal },
      );
    } catch (err) {
      signal.throwIfAborted();
      throw classify(err, false, secrets);
    }
    let produced = false;
    let finish: AiStopReason | null = null;
    let usage: { inputTokens: number; outputTokens: number } | null = null;
    try {
      for await (const chunk of upstream) {
        const u = chunk.usage;
        if (u && Number.isFinite(u.prompt_tokens) && Number.isFinite(u.completion_tokens)) usage = { inputTokens: u.prompt_tokens, outputTokens: u.completion_tokens };
        const choice = chunk.choices?.find((c) => c.index === 0) ?? chunk.choices?.[0];
        if (!choice) continue;
        const text = choice.delta?.content || choice.delta?.refusal;
        if (text) {
          produced = true;
          yield { type: 'token', content: text };
        }
        if (choice.finish_reason) finish = stopReason(choice.finish_reason);
      }
    } catch (err) {
      signal.throwIfAborted();
      throw classify(err, produced, secrets);
    }
    // The SDK ends an aborted stream quietly: a stop (or a timeout) is not a reply cut by the server.
    signal.throwIfAborted();
    if (finish === null) {
      throw produced
        ? failure('provider_disconnected', { retryable: false, detail: 'the stream ended without a finish_reason' })
        : failure('provider_unavailable', { retryable: true, detail: 'the stream ended before any choice' });
    }
    if (usage) yield { type: 'usage', ...usage };
    yield { type: 'finish', reason: finish };
  }

  return { name: 'openai-compatible', stream };
}

function stopReason(reason: string): AiStopReason {
  if (reason === 'length') return 'max_tokens';
  if (reason === 'content_filter') return 'content_filter';
  return 'stop';
}

/** An SDK error as a ProviderFailure: HTTP errors by status and body, in-stream `{"error": …}` by its type and code. */
function classify(err: unknown, produced: boolean, secrets: readonly string[]): ProviderFailure {
  if (err instanceof OpenAI.APIError && !(err instanceof OpenAI.APIConnectionError)) {
    const body = (err.error ?? {}) as { message?: unknown };
    return httpFailure({
      status: err.status,
      type: err.type,
      code: typeof err.code === 'string' ? err.code : null,
      message: typeof body.message === 'string' ? body.message : err.message,
      headers: err.headers,
      requestId: err.requestID,
      secrets,
    });
  }
  return transportFailure(err, produced, secrets);
}
