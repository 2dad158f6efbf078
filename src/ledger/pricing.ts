import type { Config } from '../config.js';
import type { PriceSnapshot } from '../db/schema.js';

/** Tokens in a text as the stub counts them (4 characters to a token); real models have tokenizers (src/models/tokenizers.ts). */
export function countInputTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Tokens in a whole context as the stub counts them: the sum over its messages. The stub reports exactly this. */
export function countMessagesTokens(messages: ReadonlyArray<{ content: string }>): number {
  let n = 0;
  for (const m of messages) n += countInputTokens(m.content);
  return Math.max(1, n);
}

/** The prices of a model at acceptance (per-model rates, the server-wide minimum). */
export function priceSnapshot(config: Config, model?: { inputSatsPer1k: number; outputSatsPer1k: number }): PriceSnapshot {
  return {
    inputPer1k: model?.inputSatsPer1k ?? config.PRICE_INPUT_SATS_PER_1K,
    outputPer1k: model?.outputSatsPer1k ?? config.PRICE_OUTPUT_SATS_PER_1K,
    minSats: config.MIN_REQUEST_SATS,
  };
}

/** What `inputTokens` in and `outputTokens` out cost at `prices`, rounded up to whole sats. */
export function costSats(prices: PriceSnapshot, inputTokens: number, outputTokens: number): number {
  const raw = (inputTokens * prices.inputPer1k + outputTokens * prices.outputPer1k) / 1000;
  return Math.max(prices.minSats, Math.ceil(raw - 1e-9));
}

/** The debit for a request: the cost if it uses all of `maxTokens`. */
export function estimateSats(prices: PriceSnapshot, request: string, maxTokens: number): number {
  return costSats(prices, countInputTokens(request), maxTokens);
}

/**
 * Charge for actual usage (plus the flat fee the debit included, if any), never more than was debited; the rest is
 * refunded. Work that is not chargeable (a failure before any reply, an interruption) is refunded whole, its fee
 * too; a reply stopped or cut after it began is charged for what was produced, with the fee.
 */
export function settle(prices: PriceSnapshot, debited: number, usage: { inputTokens: number; outputTokens: number }, chargeable: boolean) {
  const charged = chargeable ? Math.min(debited, costSats(prices, usage.inputTokens, usage.outputTokens) + (prices.feeSats ?? 0)) : 0;
  return { chargedSats: charged, refundedSats: debited - charged };
}
