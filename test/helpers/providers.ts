import type { AiProvider } from '../../src/providers/ai/types.js';

/**
 * A provider streaming `n` big tokens (`i:` and `size` bytes of `x`), `delayMs` apart: a few of them fill a
 * socket's buffers, so a reader that does not read backs the server's writes up at once.
 */
export function bigTokens(n: number, size: number, delayMs = 1): AiProvider {
  return {
    name: 'big',
    async *stream() {
      for (let i = 0; i < n; i++) {
        await new Promise((r) => setTimeout(r, delayMs));
        yield { type: 'token', content: `${i}:${'x'.repeat(size)}` };
      }
      yield { type: 'usage', inputTokens: 1, outputTokens: n };
    },
    async evaluate() {
      return { accept: false, reason: 'n/a' };
    },
  };
}
