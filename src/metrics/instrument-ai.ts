import { AiError, type AiChunk, type AiProvider, type AiRequest } from '../providers/ai/types.js';

/** What the wrapper counts into (the context's metrics). */
export interface AiMetrics {
  tokens(provider: string, n?: number): void;
  providerError(provider: string, code: string): void;
}

/**
 * An AI provider that counts what passes through it: tokens streamed, and failures by code (an abort we asked
 * for is not a failure). Wrapping the provider counts every caller — runs, job evaluations, the demo — without
 * a line in any of them. Breaking out of the stream still aborts the upstream call: `for await` hands `return`
 * down to the inner iterator.
 */
export function instrumentAi(ai: AiProvider, metrics: AiMetrics): AiProvider {
  const failed = (err: unknown, signal: AbortSignal) => {
    if (!signal.aborted) metrics.providerError(ai.name, err instanceof AiError ? err.code : 'unknown');
  };
  return {
    name: ai.name,
    async *stream(req: AiRequest, signal: AbortSignal): AsyncGenerator<AiChunk> {
      // Counted live, one per chunk; a real provider's chunk is often several tokens, so when its own output
      // count arrives the counter is topped up to it (a counter never goes down: a lower count adds nothing).
      let chunks = 0;
      try {
        for await (const chunk of ai.stream(req, signal)) {
          if (chunk.type === 'token') {
            chunks++;
            metrics.tokens(ai.name);
          } else if (chunk.type === 'usage' && chunk.outputTokens !== undefined && chunk.outputTokens > chunks) {
            metrics.tokens(ai.name, chunk.outputTokens - chunks);
            chunks = chunk.outputTokens;
          }
          yield chunk;
        }
      } catch (err) {
        failed(err, signal);
        throw err;
      }
    },
    async evaluate(request, signal) {
      try {
        return await ai.evaluate(request, signal);
      } catch (err) {
        failed(err, signal);
        throw err;
      }
    },
  };
}
