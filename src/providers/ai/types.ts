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

export interface AiRequest {
  input: string;
  maxTokens: number;
}

export type AiChunk =
  | { type: 'token'; content: string }
  | { type: 'usage'; inputTokens: number; outputTokens: number };

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
