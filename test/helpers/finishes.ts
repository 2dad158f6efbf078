import pg from 'pg';
import { createStubAiProvider } from '../../src/providers/ai/stub.js';
import type { AiProvider } from '../../src/providers/ai/types.js';

/** A fast stub provider that counts the provider calls that have ended (however they ended). */
export function countingStub() {
  const stub = createStubAiProvider({ tokenDelayMs: 1, outputTokens: 2 });
  const counter = { ended: 0 };
  const ai: AiProvider = {
    ...stub,
    name: 'stub',
    async *stream(req, signal) {
      try {
        yield* stub.stream(req, signal);
      } finally {
        counter.ended++;
      }
    },
  };
  return { ai, counter };
}

/**
 * Route every finish statement of this test file's process (runs/finish.ts: the single one and the batch) through
 * `on`, which sends it (`send`) when and if it likes; every other statement goes straight to Postgres. Returns the
 * undo. (Test files run in processes of their own, so the patch reaches no other file.)
 */
export function interceptFinishes(on: (kind: 'single' | 'batch', send: () => unknown, args: unknown[]) => unknown): () => void {
  const query = pg.Client.prototype.query;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as { text?: string } | string;
    const text = typeof q === 'string' ? q : (q?.text ?? '');
    const send = () => (query as (...a: unknown[]) => unknown).apply(this, args);
    if (text.includes('with inp as')) return on('batch', send, args);
    if (text.includes('with old as (select last_seq from runs')) return on('single', send, args);
    return send();
  } as typeof query;
  return () => void (pg.Client.prototype.query = query);
}
