import { eq, sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/pool.js';
import { runs, type RunKind, type RunState } from '../db/schema.js';
import { settle } from '../ledger/pricing.js';
import type { Models } from '../models/providers.js';
import type { AiStopReason } from '../providers/ai/types.js';
import { inputOf } from './context.js';
import type { RunEvent } from './registry.js';
import { isLive, type RunRow, type RunStore } from './store.js';

export interface Usage {
  inputTokens: number;
  outputTokens: number;
}

/** `usage` is what the provider reported; a count it never sent is estimated from the run (see `finishRun`). */
export type Outcome =
  | { state: 'complete'; usage?: Partial<Usage>; stopReason?: AiStopReason }
  | { state: 'cancelled' | 'interrupted'; usage?: Partial<Usage> }
  /**
   * `chargeProduced`: the reply was cut after the client had received text (a provider connection that broke
   * mid-stream): that text is charged, estimated like any count the provider never sent; the rest is refunded.
   * Every other failure refunds in full.
   */
  | { state: 'failed'; error: { code: string; message: string }; chargeProduced?: boolean; usage?: Partial<Usage> };

/**
 * Moves the money of a finished run for its front door, inside the finish transaction:
 * a session gets its refund credited, a job records what it owes back.
 */
export type Settler = (tx: Tx, run: RunRow) => Promise<void>;
export type Settlers = Record<RunKind, Settler>;

export interface Finished {
  run: RunRow;
  final: RunEvent;
  /** False when another finisher got there first; `final` is then the event it wrote. */
  won: boolean;
}

/**
 * Finish a run once: in one transaction, write the token events not yet persisted, the final event, the run's
 * state, usage and money, and the front door's settlement. The row lock plus the state check make it a
 * compare-and-set: whoever comes second (a stop racing a completion, two processes recovering one orphan)
 * reads the winner's final event instead of writing its own.
 *
 * The final event's seq is never one a reader already holds. The owner passes `published`, the highest seq it
 * handed to readers (all of them are in the log or in `pending`), and the final event comes right after it: the
 * log stays gapless. Anyone else (recovery, or an owner that no longer knows) cannot know what was published, so
 * it numbers the final event after the run's seq ceiling, the most the owner was ever allowed to publish: the log
 * then has a gap before its final event, which every reader accepts (see feed.ts).
 */
export async function finishRun(
  deps: { db: Db; store: RunStore; settlers: Settlers; models: Pick<Models, 'tokenizer'> },
  runId: string,
  outcome: Outcome,
  pending: RunEvent[] = [],
  published?: number,
): Promise<Finished | undefined> {
  return deps.db.transaction(async (tx) => {
    const [row] = await tx.select().from(runs).where(eq(runs.id, runId)).for('update');
    if (!row) return undefined;
    if (!isLive(row.state)) {
      const [final] = await tx.execute<{ seq: number; type: 'done' | 'error'; data: unknown }>(
        sql`select seq, type, data from run_events where run_id = ${runId} order by seq desc limit 1`,
      ).then((r) => r.rows);
      return { run: row, final: final ?? finalEvent(row, row.lastSeq + 1), won: false };
    }
    const fresh = pending.filter((e) => e.seq > row.lastSeq && e.type === 'token');
    await deps.store.insertEvents(tx, runId, fresh);
    const text = fresh.map((e) => (e.data as { content: string }).content).join('');
    const tokensSeen = row.outputTokens + fresh.length;
    // The provider's counts are charged. One it never sent (a stream stopped before its usage, a server that
    // sends none) is estimated by the model's tokenizer: the input it was given, and the text it visibly produced
    // — a token event is a chunk of text, not one token. The charge never exceeds the debit (`settle`).
    const reported = outcome.usage;
    const tokenizer = deps.models.tokenizer(row.model);
    const usage: Usage = {
      inputTokens: reported?.inputTokens ?? (row.startedAt ? tokenizer.contextEstimate(inputOf(row)) : 0),
      outputTokens: reported?.outputTokens ?? tokenizer.textEstimate(row.result + text),
    };
    // Complete work is charged; a stop, or a reply cut mid-stream, is charged for what it produced; other failures
    // and interruptions refund all.
    const producedCharged = outcome.state === 'cancelled' || (outcome.state === 'failed' && outcome.chargeProduced === true);
    const chargeable = outcome.state === 'complete' || (producedCharged && tokensSeen > 0);
    const money = settle(row.pricing, row.debitedSats, usage, chargeable);
    const lastSeq = (published === undefined ? Math.max(row.lastSeq, row.seqCeiling) : Math.max(published, row.lastSeq, fresh.at(-1)?.seq ?? 0)) + 1;

    const [updated] = await tx
      .update(runs)
      .set({
        state: outcome.state,
        result: sql`${runs.result} || ${text}`,
        inputTokens: usage.inputTokens,
        outputTokens: usage.outputTokens,
        chargedSats: money.chargedSats,
        refundedSats: money.refundedSats,
        error: outcome.state === 'failed' ? outcome.error : null,
        stopReason: outcome.state === 'complete' ? (outcome.stopReason ?? 'stop') : null,
        lastSeq,
        completedAt: sql`now()`,
        leaseOwner: null,
        leaseExpiresAt: null,
      })
      .where(eq(runs.id, runId))
      .returning();
    const final = finalEvent(updated!, lastSeq);
    await deps.store.insertEvents(tx, runId, [final]);
    await deps.settlers[updated!.kind](tx, updated!);
    return { run: updated!, final, won: true };
  });
}

/**
 * The last event of every stream: `done` with the money, or `error` for a failure. Both carry what a reader
 * needs to describe the finished run without reading its row (a face's stream is a function of the log).
 */
export function finalEvent(run: RunRow, seq: number): RunEvent {
  const common = {
    result: run.result,
    debitedSats: run.debitedSats,
    chargedSats: run.chargedSats,
    refundedSats: run.refundedSats,
    usage: { inputTokens: run.inputTokens, outputTokens: run.outputTokens },
    completedAt: run.completedAt?.toISOString() ?? null,
  };
  if (run.state === 'failed') {
    return {
      seq,
      type: 'error',
      data: { state: 'failed', code: run.error?.code ?? 'failed', message: run.error?.message ?? 'the run failed', ...common },
    };
  }
  return { seq, type: 'done', data: { state: run.state as RunState, ...common, stopReason: run.stopReason } };
}
