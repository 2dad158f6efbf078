import type { Config } from '../config.js';
import type { PriceSnapshot } from '../db/schema.js';

/** Tokens in a text, roughly: the stub and the estimate agree on it, so the debit always covers the input. */
export function countInputTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

export function priceSnapshot(config: Config): PriceSnapshot {
  return {
    inputPer1k: config.PRICE_INPUT_SATS_PER_1K,
    outputPer1k: config.PRICE_OUTPUT_SATS_PER_1K,
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

/** Charge for actual usage, never more than was debited; the rest is refunded. */
export function settle(prices: PriceSnapshot, debited: number, usage: { inputTokens: number; outputTokens: number }, chargeable: boolean) {
  const charged = chargeable ? Math.min(debited, costSats(prices, usage.inputTokens, usage.outputTokens)) : 0;
  return { chargedSats: charged, refundedSats: debited - charged };
}
