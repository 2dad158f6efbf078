/**
 * What every AI provider offers. The stub is the default; real providers sit behind the same interface.
 * `stream` returns an async iterable that owns its abort: breaking out of the loop, or aborting `signal`,
 * stops the upstream work.
 */
export interface AiProvider {
  readonly name: string;
  stream(req: AiRequest, signal: AbortSignal): AsyncIterable<AiChunk>;
  /** Decide whether a job is worth doing and estimate its size (jobs' evaluation step). */
  evaluate(request: string, signal: AbortSignal): Promise<AiEvaluation>;
}

/** One message of the context a provider is given, in the order it was said. */
export interface AiMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface AiRequest {
  /** The model to ask, as its provider names it (the catalogue entry's `upstreamModel`). */
  model: string;
  /** The whole context: instructions, earlier turns, then this turn's input. */
  messages: AiMessage[];
  maxTokens: number;
}

/** Why a model stopped: it was done, it hit the token limit, or a content filter cut it off. */
export type AiStopReason = 'stop' | 'max_tokens' | 'content_filter';

export type AiChunk =
  | { type: 'token'; content: string }
  /**
   * The provider's own counts: what is charged. A later usage chunk replaces an earlier one. `outputTokens` is
   * absent while only the input is known (Anthropic's `message_start`); a run that ends before the final count
   * is charged that input and an estimate of the text it produced.
   */
  | { type: 'usage'; inputTokens: number; outputTokens?: number }
  /** Sent once, after the last token; a provider that never sends it has stopped for `stop`. */
  | { type: 'finish'; reason: AiStopReason };

export type AiEvaluation =
  | { accept: true; estimatedInputTokens: number; estimatedOutputTokens: number }
  | { accept: false; reason: string };

/** A provider failure with a stable code for the client (`event: error`). */
export class AiError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'AiError';
  }
}

/** The text of the last user message: what a request "is" when one line must stand for it. */
export function lastUserText(messages: AiMessage[]): string {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i]!.role === 'user') return messages[i]!.content;
  return '';
}
