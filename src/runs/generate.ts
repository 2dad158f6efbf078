import type { Logger } from 'pino';
import { toStorable } from '../http/validate.js';
import type { Models } from '../models/providers.js';
import { AiError, type AiRequest, type AiStopReason } from '../providers/ai/types.js';
import type { EventWriter } from './event-writer.js';
import type { RunMetrics } from './executor.js';
import type { Outcome, Usage } from './finish.js';
import type { Registry, RunEntry } from './registry.js';
import type { RunRow } from './store.js';

export interface GenerateDeps {
  models: Models;
  registry: Registry;
  metrics?: RunMetrics;
}

/** Postgres cannot store NUL or a lone surrogate; a provider that sends one must not wedge the run. */
const clean = toStorable;

/**
 * Failures after which the text the client already received is charged (estimated by the model's tokenizer,
 * never more than the debit): the provider's connection broke mid-reply. Timeouts and every other failure refund
 * in full.
 */
const CHARGE_PRODUCED = new Set(['provider_disconnected']);

/**
 * A claimed run's work: its model's provider streams, each token is published to the registry (its readers) and
 * queued for the event writer (Postgres), and the outcome is returned for the finish. Stopping is the entry's
 * AbortController: the provider call is aborted and the outcome says why.
 *
 * The provider is asked before this returns its promise (the body runs synchronously up to the provider's first
 * await), and before anything the first token does not need: the event writer and the run's logger are taken
 * from the executor when first used (`writerOf`, `log`), so the executor makes them once the provider is asked.
 */
export async function generate(opts: GenerateDeps, run: RunRow, entry: RunEntry, writerOf: () => EventWriter, log: () => Logger): Promise<Outcome> {
  const signal = entry.controller.signal;
  const model = opts.models.get(run.model ?? opts.models.default.entry.name);
  if (!model) {
    // The catalogue changed between acceptance and now (a restart with another configuration).
    return { state: 'failed', error: { code: 'model_unavailable', message: `the model ${run.model} is no longer served here; the request was refunded in full` } };
  }
  const messages = run.input ?? [{ role: 'user' as const, content: run.request }];
  if (model.tokenizer.contextBound(messages) + run.maxTokens > model.entry.contextTokens) {
    return { state: 'failed', error: { code: 'context_length_exceeded', message: `the conversation no longer fits the ${model.entry.contextTokens}-token context of ${model.entry.name}; the request was refunded in full` } };
  }
  const req: AiRequest = { model: model.entry.upstreamModel, messages, maxTokens: run.maxTokens };
  // The provider's counts so far (a count it never sent is estimated by the finish, from the text).
  let usage: Partial<Usage> | undefined;
  let stopReason: AiStopReason = 'stop';
  try {
    for await (const chunk of model.provider.stream(req, signal)) {
      if (chunk.type === 'usage') {
        usage = { inputTokens: tokenCount(chunk.inputTokens), outputTokens: tokenCount(chunk.outputTokens) };
        continue;
      }
      if (chunk.type === 'finish') {
        stopReason = chunk.reason;
        continue;
      }
      // Never publish an id Postgres has not reserved (the seq ceiling): should this process die now, whoever
      // finishes the run numbers its final event above it. This is also the backpressure on a model faster than
      // Postgres (at most `window` events unwritten), and it holds the model while Postgres is unreachable.
      const seq = entry.lastSeq + 1;
      const writer = writerOf();
      if (seq > writer.ceiling) await writer.reserve(seq, signal);
      if (signal.aborted) break;
      writer.add(opts.registry.append(run.id, 'token', { content: clean(chunk.content) }));
      if (entry.outputTokens === 1) opts.metrics?.firstToken(entry);
    }
    if (signal.aborted) throw signal.reason;
    return { state: 'complete', usage, stopReason };
  } catch (err) {
    if (signal.aborted) return { state: signal.reason === 'cancelled' ? 'cancelled' : 'interrupted', usage };
    log().warn({ err }, 'run failed');
    const e = err instanceof AiError ? err : new AiError('provider_error', 'the AI provider failed');
    // A reply cut after text reached the client: that text is charged (issue #8), the rest refunded.
    return { state: 'failed', error: { code: e.code, message: e.message }, chargeProduced: CHARGE_PRODUCED.has(e.code), usage };
  }
}

/** The most tokens a run's row can hold (its count columns are Postgres `integer`s). */
const MAX_COUNT = 2 ** 31 - 1;

/**
 * A provider's token count as the finish may record it, or undefined (then it is estimated, as one never sent). An
 * upstream that sends a fraction, a negative, or more than the row can hold must not make the finish statement fail
 * on every retry, leaving completed work to recovery as `interrupted`; the charge never exceeds the debit anyway.
 */
function tokenCount(n: number | undefined): number | undefined {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return undefined;
  return Math.min(Math.ceil(n), MAX_COUNT);
}
