import type { RunEntry } from './registry.js';
import type { RunRow } from './store.js';

/**
 * The public fields of a run, shared by every front door. While the run is live in this process its text and
 * state come from memory (fresher than the last batch written to Postgres).
 */
export function runFields(row: RunRow, live?: RunEntry) {
  const fresh = live && !live.ended && (row.state === 'queued' || row.state === 'executing');
  return {
    state: fresh ? live.state : row.state,
    /** Which face took it: `api` (a session request), `responses` or `chat` (the OpenAI face). */
    face: row.face,
    model: row.model,
    request: row.request,
    result: fresh ? live.result : row.result,
    ...(row.error ? { error: row.error } : {}),
    /** Why the model stopped (`stop`, `max_tokens`, `content_filter`), once it has. */
    stopReason: row.stopReason,
    debitedSats: row.debitedSats,
    chargedSats: row.chargedSats,
    refundedSats: row.refundedSats,
    usage: { inputTokens: row.inputTokens, outputTokens: fresh ? live.outputTokens : row.outputTokens },
    createdAt: row.createdAt.toISOString(),
    startedAt: row.startedAt?.toISOString() ?? null,
    completedAt: row.completedAt?.toISOString() ?? null,
  };
}
