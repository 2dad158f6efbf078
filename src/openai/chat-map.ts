import type { RunRow } from '../runs/store.js';
import { chatCompletionId } from './ids.js';
import type { Outcome } from './response-object.js';

/** The `chat.completion` shapes of a run, after the `openai` SDK's `ChatCompletion` and `ChatCompletionChunk`. */

const FINISH: Record<string, string> = { max_tokens: 'length', content_filter: 'content_filter' };
export const finishReason = (o: Pick<Outcome, 'stopReason'>) => FINISH[o.stopReason ?? ''] ?? 'stop';

const seconds = (d: Date) => Math.floor(d.getTime() / 1000);

export function chatUsage(o: Outcome) {
  return {
    prompt_tokens: o.usage.inputTokens,
    completion_tokens: o.usage.outputTokens,
    total_tokens: o.usage.inputTokens + o.usage.outputTokens,
    prompt_tokens_details: { cached_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0 },
  };
}

/** The money of a run under the `sluice` extension key, as on every /v1 object. */
export const sluiceMoney = (row: RunRow, o: Outcome) => ({
  run_id: row.id,
  state: o.state,
  debited_sats: o.debitedSats,
  charged_sats: o.chargedSats,
  refunded_sats: o.refundedSats,
});

export function chatCompletion(row: RunRow, o: Outcome) {
  return {
    id: chatCompletionId(row.id),
    object: 'chat.completion',
    created: seconds(row.createdAt),
    model: row.model,
    choices: [{ index: 0, message: { role: 'assistant', content: o.result, refusal: null, annotations: [] }, finish_reason: finishReason(o), logprobs: null }],
    usage: chatUsage(o),
    system_fingerprint: null,
    sluice: sluiceMoney(row, o),
  };
}

/** A `chat.completion.chunk` with one choice (or none: the usage chunk). */
export function chatChunk(row: RunRow, choice: { delta: Record<string, unknown>; finish_reason: string | null } | null, extra: Record<string, unknown> = {}) {
  return {
    id: chatCompletionId(row.id),
    object: 'chat.completion.chunk',
    created: seconds(row.createdAt),
    model: row.model,
    system_fingerprint: null,
    choices: choice ? [{ index: 0, ...choice, logprobs: null }] : [],
    ...extra,
  };
}
