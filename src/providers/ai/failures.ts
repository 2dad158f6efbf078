import { AiError } from './types.js';

/**
 * Why a real provider failed, as a stable run error code. Every failed run is refunded in full, whatever the
 * code; the codes tell a client (and the operator's metrics) what went wrong, never how the provider put it:
 * an upstream message may hold the operator's organisation, a masked key or worse, so it goes to the log only,
 * scrubbed (`detail`), and the run's message is ours.
 *
 * | code                       | when                                                                 | retried before the first token |
 * |----------------------------|----------------------------------------------------------------------|--------------------------------|
 * | `provider_rate_limited`    | 429 (`rate_limit_exceeded`, `rate_limit_error`)                      | yes, honouring `retry-after`   |
 * | `provider_unavailable`     | 5xx, 529 `overloaded_error`, 408; a connection refused, reset or cut before the first token | yes |
 * | `provider_timeout`         | no first token, or silence between tokens, past its timeout          | no                             |
 * | `provider_disconnected`    | the stream broke, or ended without its end marker, after a token     | no (a token was streamed)      |
 * | `context_length_exceeded`  | the provider says the input does not fit                             | no                             |
 * | `provider_auth_failed`     | 401/403: the operator's key was refused                              | no                             |
 * | `provider_quota_exceeded`  | the operator's account is out of credit (`insufficient_quota`, `billing_error`) | no                  |
 * | `provider_rejected`        | any other 4xx (an unknown upstream model, a parameter it refuses)     | no                             |
 * | `provider_error`           | anything else (a malformed stream, an unexpected error)              | no                             |
 */
export type ProviderErrorCode =
  | 'provider_rate_limited'
  | 'provider_unavailable'
  | 'provider_timeout'
  | 'provider_disconnected'
  | 'context_length_exceeded'
  | 'provider_auth_failed'
  | 'provider_quota_exceeded'
  | 'provider_rejected'
  | 'provider_error';

export interface FailureInfo {
  /** Worth another attempt (only ever made before the first token). */
  retryable: boolean;
  /** How long the provider asked us to wait (`retry-after-ms` / `retry-after`). */
  retryAfterMs?: number;
  status?: number;
  /** The provider's request id (`x-request-id`, `request-id`): safe to show, and what its support asks for. */
  requestId?: string;
  /** The provider's own words, scrubbed of keys: for the log only. */
  detail?: string;
}

export class ProviderFailure extends AiError {
  constructor(
    code: ProviderErrorCode,
    message: string,
    readonly info: FailureInfo,
  ) {
    super(code, message);
    this.name = 'ProviderFailure';
  }
}

/** Our message for each code: what a client may read (the provider's request id is added when known). */
const MESSAGES: Record<ProviderErrorCode, string> = {
  provider_rate_limited: 'the model provider is rate limiting this server',
  provider_unavailable: 'the model provider is unavailable',
  provider_timeout: 'the model provider did not answer in time',
  provider_disconnected: 'the connection to the model provider broke during the reply',
  context_length_exceeded: "the input does not fit the model's context window",
  provider_auth_failed: "the model provider refused this server's credentials",
  provider_quota_exceeded: "this server's account at the model provider is out of credit",
  provider_rejected: 'the model provider refused the request',
  provider_error: 'the model provider failed',
};

export function failure(code: ProviderErrorCode, info: FailureInfo, what = MESSAGES[code]): ProviderFailure {
  const ref = [info.status ? `HTTP ${info.status}` : null, info.requestId ? `request ${info.requestId}` : null].filter(Boolean).join(', ');
  // No word about money: every failed run is refunded in full, and each face says so in its own way.
  return new ProviderFailure(code, `${what}${ref ? ` (${ref})` : ''}`, info);
}

/** `retry-after-ms`, else `retry-after` (seconds or an HTTP date), as both SDKs read them; undefined if absent or unusable. */
export function retryAfterMs(headers: Headers | undefined | null): number | undefined {
  const ms = Number.parseFloat(headers?.get('retry-after-ms') ?? '');
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const v = headers?.get('retry-after');
  if (!v) return undefined;
  const s = Number.parseFloat(v);
  if (Number.isFinite(s)) return s >= 0 ? s * 1000 : undefined;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

/** Words that mean "your input is too long", across OpenAI, vLLM, llama.cpp, Ollama, LiteLLM and Anthropic. */
const TOO_LONG = /context[ _]length|context window|context limit|maximum context|too many tokens|prompt is too long|input is too long|exceeds? the (available )?context/i;

/**
 * An HTTP failure (a status, or an error inside a 200 stream) as a ProviderFailure. `type` and `code` are the
 * error body's (`error.type`, `error.code`); `headers` are the response's.
 */
export function httpFailure(p: { status?: number; type?: string | null; code?: string | null; message?: string; headers?: Headers | null; requestId?: string | null; secrets: readonly string[] }): ProviderFailure {
  const { status } = p;
  const detail = p.message !== undefined ? scrub(p.message, p.secrets) : undefined;
  const should = p.headers?.get('x-should-retry');
  const info = (retryable: boolean): FailureInfo => ({
    // A server that says whether to retry is obeyed (as both SDKs do).
    retryable: should === 'true' ? true : should === 'false' ? false : retryable,
    retryAfterMs: retryAfterMs(p.headers),
    status,
    requestId: p.requestId ?? p.headers?.get('x-request-id') ?? p.headers?.get('request-id') ?? undefined,
    detail,
  });
  const kind = `${p.type ?? ''} ${p.code ?? ''}`;
  if (p.code === 'context_length_exceeded' || ((status === 400 || status === 413 || p.type === 'invalid_request_error') && TOO_LONG.test(p.message ?? ''))) {
    return failure('context_length_exceeded', info(false));
  }
  if (/insufficient_quota|billing_error/.test(kind) || status === 402) return failure('provider_quota_exceeded', info(false));
  if (status === 429 || /rate_limit/.test(kind)) return failure('provider_rate_limited', info(true));
  if (status === 401 || status === 403 || /authentication_error|permission_error|invalid_api_key/.test(kind)) return failure('provider_auth_failed', info(false));
  if (status === 408 || (status !== undefined && status >= 500) || /overloaded_error|api_error|server_error|timeout_error/.test(kind)) {
    return failure('provider_unavailable', info(true));
  }
  if (status !== undefined && status >= 400) return failure('provider_rejected', info(false));
  return failure('provider_error', info(false));
}

/**
 * A failure that is not the provider's answer: a stream that is not JSON (`provider_error`), or a connection
 * refused, reset or cut mid-body (undici's `TypeError: terminated`) — worth a retry before the first token; after
 * one, the reply was cut (`provider_disconnected`).
 */
export function transportFailure(err: unknown, produced: boolean, secrets: readonly string[]): ProviderFailure {
  const detail = scrub(describe(err), secrets);
  if (err instanceof SyntaxError) return failure('provider_error', { retryable: false, detail });
  if (produced) return failure('provider_disconnected', { retryable: false, detail });
  return failure('provider_unavailable', { retryable: true, detail });
}

/** An error's message with its causes (`TypeError: terminated` ← `SocketError: other side closed`). */
export function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    parts.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  }
  return parts.join(' ← ');
}

/** Key-shaped strings (`sk-…`, `sk-ant-…`, bearer tokens) and every secret we hold, out of a text. */
export function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s.length >= 4) out = out.split(s).join('[redacted]');
  return out.replace(/\b(sk-[A-Za-z0-9_*.-]{6,}|Bearer\s+[A-Za-z0-9._~+/=-]{8,})/g, '[redacted]').slice(0, 1000);
}
