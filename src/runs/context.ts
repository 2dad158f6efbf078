import { and, desc, eq, lt, sql } from 'drizzle-orm';
import type { Db, DbOrTx } from '../db/pool.js';
import { conversations, runs } from '../db/schema.js';
import type { AiMessage } from '../providers/ai/types.js';
import type { RunRow, RunStore } from './store.js';

/**
 * What a provider is given: a run's instructions first, then the history it carries over, then its own turn.
 * History is built from finished runs only, so it never changes once read: a run's `input` is resolved once
 * (at acceptance, or when a run enqueued behind another starts) and kept on its row, where any process can read it.
 */
export function composeInput(instructions: string | null | undefined, history: AiMessage[], turn: AiMessage[]): AiMessage[] {
  return [...(instructions ? [{ role: 'system' as const, content: instructions }] : []), ...history, ...turn];
}

/** A run's provider input: `input` once resolved; rows from before it existed are their request as one message. */
export function inputOf(run: Pick<RunRow, 'input' | 'turn' | 'request'>): AiMessage[] {
  return run.input ?? run.turn ?? [{ role: 'user', content: run.request }];
}

/** A run's own new messages. */
export function turnOf(run: Pick<RunRow, 'turn' | 'request'>): AiMessage[] {
  return run.turn ?? [{ role: 'user', content: run.request }];
}

/** Only a run that ended `complete` because the model was done can be continued. */
export const isChainable = (run: Pick<RunRow, 'state' | 'stopReason'>) => run.state === 'complete' && (run.stopReason ?? 'stop') === 'stop';
const chainable = sql`${runs.state} = 'complete' and coalesce(${runs.stopReason}, 'stop') = 'stop'`;

/** What a finished run hands the next turn: its context without its own instructions, then its reply. */
export function carryOver(run: Pick<RunRow, 'instructions' | 'input' | 'turn' | 'request' | 'result'>): AiMessage[] {
  const input = inputOf(run);
  return [...(run.instructions ? input.slice(1) : input), { role: 'assistant', content: run.result }];
}

/**
 * The history a conversation's turn `beforeTurn` sees: the conversation's initial items and every completed
 * run before it. The last completed run's own input already holds everything before it, so one row is enough.
 */
export async function conversationHistory(tx: DbOrTx, conversationId: string, beforeTurn: number): Promise<AiMessage[]> {
  const [last] = await tx
    .select({ instructions: runs.instructions, input: runs.input, turn: runs.turn, request: runs.request, result: runs.result })
    .from(runs)
    .where(and(eq(runs.conversationId, conversationId), lt(runs.conversationTurn, beforeTurn), chainable))
    .orderBy(desc(runs.conversationTurn))
    .limit(1);
  if (last) return carryOver(last);
  const [conv] = await tx.select({ items: conversations.items }).from(conversations).where(eq(conversations.id, conversationId));
  return conv?.items ?? [];
}

/** The completed runs of a conversation, oldest first (what its item list shows, after the initial items). */
export async function conversationTurns(tx: DbOrTx, conversationId: string) {
  return tx
    .select({ id: runs.id, turn: runs.turn, request: runs.request, result: runs.result, createdAt: runs.createdAt })
    .from(runs)
    .where(and(eq(runs.conversationId, conversationId), chainable))
    .orderBy(runs.conversationTurn);
}

/** A run enqueued behind another resolves its context when it starts, now that the runs before it have ended. */
export async function resolveInput(deps: { db: Db; store: RunStore; owner: string; attempt: number }, run: RunRow): Promise<RunRow> {
  if (run.input) return run;
  const history = run.conversationId !== null && run.conversationTurn !== null ? await conversationHistory(deps.db, run.conversationId, run.conversationTurn) : [];
  const input = composeInput(run.instructions, history, run.turn ?? [{ role: 'user', content: run.request }]);
  await deps.store.setInput(run.id, deps.owner, deps.attempt, input);
  return { ...run, input };
}
