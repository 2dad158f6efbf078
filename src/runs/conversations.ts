import { and, asc, eq, inArray, sql } from 'drizzle-orm';
import type { Db, DbOrTx, Tx } from '../db/pool.js';
import { conversations, runs } from '../db/schema.js';
import type { AiMessage } from '../providers/ai/types.js';
import { LIVE_STATES } from './store.js';

export type ConversationRow = typeof conversations.$inferSelect;

/** The conversations table: every SQL statement about conversations lives here. */
export function createConversationStore(db: Db) {
  /** The conversation's queued and executing runs, in turn order. */
  const liveRuns = (tx: DbOrTx, id: string) =>
    tx
      .select({ id: runs.id, turn: runs.turn, request: runs.request, maxTokens: runs.maxTokens })
      .from(runs)
      .where(and(eq(runs.conversationId, id), inArray(runs.state, [...LIVE_STATES])))
      .orderBy(asc(runs.conversationTurn));

  return {
    liveRuns,

    async create(sessionId: string, items: AiMessage[], metadata: Record<string, string>): Promise<ConversationRow> {
      const [row] = await db.insert(conversations).values({ sessionId, items, metadata }).returning();
      return row!;
    },

    /** The session's conversation, or undefined (another session's is not found either). */
    async get(sessionId: string, id: string, tx: DbOrTx = db): Promise<ConversationRow | undefined> {
      const [row] = await tx.select().from(conversations).where(and(eq(conversations.id, id), eq(conversations.sessionId, sessionId)));
      return row;
    },

    /**
     * Number the next turn. The UPDATE holds the conversation's row lock until the accepting transaction ends,
     * so acceptances into one conversation happen one at a time: each sees every earlier one's run.
     */
    async nextTurn(tx: Tx, sessionId: string, id: string): Promise<number | undefined> {
      const [row] = await tx
        .update(conversations)
        .set({ turns: sql`${conversations.turns} + 1`, updatedAt: sql`now()` })
        .where(and(eq(conversations.id, id), eq(conversations.sessionId, sessionId)))
        .returning({ turns: conversations.turns });
      return row?.turns;
    },

    async setMetadata(sessionId: string, id: string, metadata: Record<string, string>): Promise<ConversationRow | undefined> {
      const [row] = await db
        .update(conversations)
        .set({ metadata, updatedAt: sql`now()` })
        .where(and(eq(conversations.id, id), eq(conversations.sessionId, sessionId)))
        .returning();
      return row;
    },

    /** Delete it unless a run of it is live (its runs keep their history; they only lose the link). */
    async delete(sessionId: string, id: string): Promise<'deleted' | 'busy' | 'missing'> {
      return db.transaction(async (tx) => {
        const [row] = await tx
          .select({ id: conversations.id })
          .from(conversations)
          .where(and(eq(conversations.id, id), eq(conversations.sessionId, sessionId)))
          .for('update');
        if (!row) return 'missing';
        if ((await liveRuns(tx, id)).length > 0) return 'busy';
        await tx.delete(conversations).where(eq(conversations.id, id));
        return 'deleted';
      });
    },

    /** Conversations unused since `cutoff` with no live run (a bounded batch per sweep). */
    async deleteIdleBefore(cutoff: Date, limit = 500): Promise<number> {
      // A conversation taking a turn right now holds its row (nextTurn's update, until its run is committed): it
      // is skipped, not waited for, and the conditions are checked again on the row itself, so a turn accepted while
      // the sweep ran can never lose its conversation. (The candidates' own conditions come from the statement's
      // snapshot, which cannot see that turn.)
      const at = cutoff.toISOString();
      const res = await db.execute(sql`
        delete from conversations d where d.id in (
          select c.id from conversations c where c.updated_at < ${at}::timestamptz
            and not exists (select 1 from runs r where r.conversation_id = c.id and r.state in ('queued','executing'))
          limit ${limit} for update skip locked)
        and d.updated_at < ${at}::timestamptz`);
      return res.rowCount ?? 0;
    },
  };
}

export type ConversationStore = ReturnType<typeof createConversationStore>;
