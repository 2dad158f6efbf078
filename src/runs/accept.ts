import { randomUUID } from 'node:crypto';
import { and, eq, inArray } from 'drizzle-orm';
import type pg from 'pg';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { runs, sessions, type RunFace } from '../db/schema.js';
import { AppError, conflict, overloaded } from '../http/errors.js';
import type { Principal } from '../http/principal.js';
import { debitSession } from '../ledger/ledger.js';
import { costSats, priceSnapshot } from '../ledger/pricing.js';
import type { ModelEntry } from '../models/catalogue.js';
import type { Models } from '../models/providers.js';
import type { AiMessage } from '../providers/ai/types.js';
import { carryOver, composeInput, conversationHistory, isChainable } from './context.js';
import type { ConversationStore } from './conversations.js';
import { createPlainAccepts } from './accept-batch.js';
import { busMessage } from '../bus-bridge.js';
import type { Admission, Executor, Refusal } from './executor.js';
import { claimKey, recordAnswer, type IdempotencyClaim } from './idempotency.js';
import { LIVE_STATES, type RunRow, type RunStore } from './store.js';

/** What a second request does while a run of its conversation is still active. */
export type MultitaskStrategy = 'reject' | 'enqueue' | 'interrupt';

export interface AcceptSpec {
  model: ModelEntry;
  /** One line that stands for the request (the /api face shows it). */
  request: string;
  /** This turn's new messages. */
  turn: AiMessage[];
  instructions?: string | null;
  maxTokens: number;
  /** Continue this finished run (its context and its reply come first). */
  previousRunId?: string | null;
  conversation?: { id: string; strategy: MultitaskStrategy } | null;
  face: RunFace;
  faceData?: Record<string, unknown> | null;
  /** Delete the run as soon as it ends (its ledger rows stay). */
  ephemeral?: boolean;
  idempotency?: IdempotencyClaim | null;
  /** The door's answer, remembered with the idempotency key when it is not derived from the run itself. */
  answer?: (run: RunRow, balance: number) => unknown;
}

export type Acceptance =
  | { replayed: false; run: RunRow; balance: number; answer?: unknown }
  /** The same key and body came before: here is what it started (the run may since have been deleted). */
  | { replayed: true; runId: string; answer: unknown };

/**
 * A live predecessor's reply, carried into the context of a run enqueued behind it, is estimated at this many
 * counted tokens per token it may produce: the stub counts 4 characters to an input token and its longest word
 * counts 3; a real model's reply re-read as input counts about what it did as output (BPE), so 3 is ample. The
 * charge is the provider's real count and never exceeds the debit, so a low guess can only cost the operator,
 * never the client.
 */
const CARRIED_TOKENS_PER_OUTPUT_TOKEN = 3;

export interface AcceptDeps {
  config: Config;
  db: Db;
  pool: pg.Pool;
  store: RunStore;
  conversations: ConversationStore;
  executor: Executor;
  instanceId: string;
  /** Each model's tokenizer: the estimate that must cover the input. */
  models: Pick<Models, 'tokenizer'>;
}

/** The session cannot pay: thrown inside the accepting transaction to roll it back whole. */
class Unpaid {
  constructor(readonly required: number) {}
}
const unpaidAnswer = (err: unknown) => {
  if (err instanceof Unpaid) return { kind: 'unpaid' as const, required: err.required };
  throw err;
};

/** A request refused before any money moved: the server is shutting down, or its queue is full. */
export function refusalError(why: Refusal): AppError {
  if (why === 'shutting_down') return new AppError(503, 'shutting_down', 'the server is shutting down; try again shortly');
  return overloaded();
}

/**
 * The one place work is accepted, for every front door, so a request either took its sats and exists as a run,
 * or did neither. Only after commit is the run handed to the executor. Refusals are AppErrors that doors translate.
 *
 * - A plain request (no idempotency key, conversation or previous response) is ONE statement
 *   (accept-statement.ts): budget count, token check, debit, ledger row and run row, claimed at once when a slot
 *   is free. Its refusals are worked out after it, off the hot path. Requests that arrive while one is in flight
 *   go together, as one statement, when it returns (accept-batch.ts): one commit for many.
 * - The rest is ONE transaction: the idempotency key, the conversation's turn (its row lock serialises a
 *   conversation's acceptances), the context, the debit with its ledger row, and the run row.
 */
export function createAccept(deps: AcceptDeps) {
  const { config, db, store } = deps;
  /** Plain requests' statements, group-committed (accept-batch.ts). */
  const plainAccepts = createPlainAccepts(deps.pool);

  /** Why a session could not pay (read after the transaction rolled back). */
  async function refusal(sessionId: string, required: number): Promise<AppError> {
    const [s] = await db.select().from(sessions).where(eq(sessions.id, sessionId));
    const state = s && s.state === 'active' && s.expiresAt.getTime() <= Date.now() ? 'expired' : s?.state;
    if (!s || state !== 'active') return conflict('session_not_active', `the session is ${state ?? 'gone'}`, { state });
    return new AppError(402, 'insufficient_balance', `this request needs ${required} sats; the balance is ${s.balanceSats}`, {
      balanceSats: s.balanceSats,
      requiredSats: required,
    });
  }

  /**
   * Refuse before or after the accept's statement: the door's authentication answers first, if it has not yet
   * (then `err` is given the session it found).
   */
  async function refuse(principal: Principal, err: (sessionId: string | null) => AppError | Promise<AppError>): Promise<never> {
    const sessionId = principal.credential ? await principal.credential.verify() : principal.sessionId;
    throw await err(sessionId);
  }

  /** A plain request in one statement (see accept-statement.ts). */
  async function acceptPlainRequest(principal: Principal & { credential: NonNullable<Principal['credential']> }, spec: AcceptSpec, admission: Admission): Promise<Acceptance> {
    const input = composeInput(spec.instructions, [], spec.turn);
    // The model's tokenizer bounds the input (never below the provider's count).
    const inputTokens = deps.models.tokenizer(spec.model.name).contextBound(input);
    if (inputTokens + spec.maxTokens > spec.model.contextTokens) return refuse(principal, () => contextTooLong(spec, inputTokens));
    const prices = priceSnapshot(config, spec.model);
    const required = costSats(prices, inputTokens, spec.maxTokens);
    const out = await plainAccepts.accept({
      runId: randomUUID(),
      sessionId: principal.sessionId,
      tokenHash: principal.credential.tokenHash,
      amountSats: required,
      expiryHours: config.SESSION_EXPIRY_HOURS,
      claim: admission.claim,
      request: spec.request,
      model: spec.model.name,
      instructions: spec.instructions ?? null,
      turn: spec.turn,
      input,
      maxTokens: spec.maxTokens,
      pricing: prices,
      face: spec.face,
      faceData: spec.faceData ?? null,
      ephemeral: spec.ephemeral ?? false,
      owner: deps.instanceId,
      leaseTtlS: config.LEASE_TTL_S,
      window: deps.executor.window,
      count: principal.count,
    });
    if (!out.run) {
      // A spent budget is a 429 (the statement then took nothing); any other refusal is the door's or the money's.
      if (out.counted) principal.count!.settle(out.counted);
      return refuse(principal, (sessionId) => refusal(sessionId!, required));
    }
    // The money moved: the provider is asked first (a run claimed here starts in this call), and the answer's
    // headers are set after. Settling a count cannot refuse a run the statement accepted: the statement debits only
    // under the budget (`points <= limit`), the very test that settling repeats.
    deps.executor.accept(out.run);
    if (out.counted) principal.count!.settle(out.counted);
    const run = asAccepted(out.run);
    return { replayed: false, run, balance: out.balance!, answer: spec.answer?.(run, out.balance!) };
  }

  async function accept(principal: Principal, spec: AcceptSpec): Promise<Acceptance> {
    const tokenizer = deps.models.tokenizer(spec.model.name);
    if (spec.previousRunId && spec.conversation) {
      return refuse(principal, () => new AppError(400, 'invalid_request', 'a request continues either a previous run or a conversation, not both'));
    }
    const plain = !spec.idempotency && !spec.conversation && !spec.previousRunId;
    const admission = deps.executor.admit(!spec.conversation, principal.sessionId);
    if (typeof admission === 'string') return refuse(principal, () => refusalError(admission));
    try {
      if (plain && principal.credential) return await acceptPlainRequest(principal as Parameters<typeof acceptPlainRequest>[0], spec, admission);
      // The rest authenticates first (a statement that also takes the budget count), then runs its transaction.
      const sessionId = principal.credential ? await principal.credential.verify() : principal.sessionId!;
      const runId = randomUUID();
      const prices = priceSnapshot(config, spec.model);
      // Count this turn's messages now, outside the transaction: the tokenizer remembers long messages, so the
      // count inside it (which holds a pool client and the conversation's lock) is a cache hit for anything long.
      tokenizer.contextBound(composeInput(spec.instructions, [], spec.turn));
      let interrupted: string[] = [];
      const out = await db.transaction(async (tx) => {
        // 1. The key first: a concurrent twin waits here, before touching any money.
        if (spec.idempotency) {
          const prior = await claimKey(tx, sessionId, spec.idempotency, runId, config.IDEMPOTENCY_TTL_HOURS);
          if (prior) return { kind: 'prior' as const, prior };
        }
        // 2. The history this turn carries over, and whatever must end before it may start.
        let history: AiMessage[] = [];
        let conversationTurn: number | null = null;
        let waitsFor: string | null = null;
        let pendingTokens = 0;
        if (spec.previousRunId) {
          const prev = await store.get(spec.previousRunId, tx);
          // Only a run of the same door: a chat completion or an /api request is no response on /v1 (its GET is a 404).
          if (!prev || prev.sessionId !== sessionId || prev.ephemeral || prev.kind !== 'session' || prev.face !== spec.face) {
            throw new AppError(400, 'previous_run_not_found', `previous run ${spec.previousRunId} not found`);
          }
          if (!isChainable(prev)) {
            const status = prev.state === 'complete' ? `complete but stopped by ${prev.stopReason}` : prev.state;
            throw new AppError(400, 'previous_run_not_completed', `only a completed run can be continued; this one is ${status}`, { state: prev.state, stopReason: prev.stopReason });
          }
          history = carryOver(prev);
        }
        if (spec.conversation) {
          const { id, strategy } = spec.conversation;
          conversationTurn = (await deps.conversations.nextTurn(tx, sessionId, id)) ?? null;
          if (conversationTurn === null) throw new AppError(404, 'conversation_not_found', `conversation ${id} not found`);
          const live = await deps.conversations.liveRuns(tx, id);
          if (live.length > 0) {
            if (strategy === 'reject') {
              throw conflict('conversation_busy', 'a response of this conversation is still active; wait for it, or send multitask_strategy "enqueue" or "interrupt"', {
                activeRunId: live[0]!.id,
              });
            }
            // Started once every earlier turn has ended (the claim checks the turn order in Postgres).
            waitsFor = live.at(-1)!.id;
            if (strategy === 'interrupt') interrupted = live.map((r) => r.id);
            else for (const r of live) pendingTokens += tokenizer.contextBound(r.turn ?? [{ content: r.request }]) + r.maxTokens * CARRIED_TOKENS_PER_OUTPUT_TOKEN;
          }
          history = await conversationHistory(tx, id, conversationTurn);
        }
        // 3. The context and its price: the model's tokenizer bounds the input (never below the provider's count),
        // plus every token the reply may have.
        const input = composeInput(spec.instructions, history, spec.turn);
        const inputTokens = tokenizer.contextBound(input) + pendingTokens;
        if (inputTokens + spec.maxTokens > spec.model.contextTokens) throw contextTooLong(spec, inputTokens);
        const required = costSats(prices, inputTokens, spec.maxTokens);
        // 4. `interrupt`: the active runs are asked to stop in this same transaction (whichever process holds them
        // reads the flag); this run starts once they have ended. Before the money: every transaction here locks a
        // run's row before its session's (a finish updates the run, then credits the session), so an accept that
        // locked the session first and then an interrupted run could deadlock with that run's finish.
        if (interrupted.length > 0) {
          await tx.update(runs).set({ cancelRequested: true }).where(and(inArray(runs.id, interrupted), inArray(runs.state, [...LIVE_STATES])));
        }
        // 5. The money and the run.
        const balance = await debitSession(tx, { sessionId, runId, amountSats: required, expiryHours: config.SESSION_EXPIRY_HOURS });
        // Thrown, not returned: a refused request must leave nothing behind, so the transaction rolls back the key
        // it took (else a retry with that key, after a top-up, would be "replayed" as a run that never existed) and
        // the interrupt flags it set (else a request that could not pay would still stop the conversation's run).
        if (balance === null) throw new Unpaid(required);
        // Claimed in this same transaction when a slot is held and it waits for no earlier turn.
        const claimNow = admission.claim && !waitsFor;
        const run = await store.insert(tx, {
          id: runId,
          kind: 'session',
          sessionId,
          request: spec.request,
          model: spec.model.name,
          instructions: spec.instructions ?? null,
          turn: spec.turn,
          // Resolved now, unless it waits: then when it starts, so it sees what the runs before it said.
          input: waitsFor ? null : input,
          maxTokens: spec.maxTokens,
          pricing: prices,
          debitedSats: required,
          conversationId: spec.conversation?.id ?? null,
          conversationTurn,
          waitsFor,
          previousRunId: spec.previousRunId ?? null,
          face: spec.face,
          faceData: spec.faceData ?? null,
          ephemeral: spec.ephemeral ?? false,
          // Claimed now, or into the shared queue for whoever has a slot (the claim keeps the conversation's order).
          claim: claimNow ? { owner: deps.instanceId, leaseTtlS: config.LEASE_TTL_S, window: deps.executor.window } : undefined,
          notice: busMessage(deps.instanceId, 'run:queued', { runId, sessionId }),
        });
        const answer = spec.answer?.(asAccepted(run), balance);
        if (spec.idempotency && answer !== undefined) await recordAnswer(tx, sessionId, spec.idempotency.key, answer);
        return { kind: 'accepted' as const, run, balance, answer };
      }).catch(unpaidAnswer);
      if (out.kind === 'prior') {
        if (out.prior.fingerprint !== spec.idempotency!.fingerprint) {
          throw conflict('idempotency_key_conflict', 'this Idempotency-Key was already used with another request; use a new key for a new request');
        }
        return { replayed: true, runId: out.prior.runId, answer: out.prior.response };
      }
      if (out.kind === 'unpaid') throw await refusal(sessionId, out.required);
      deps.executor.accept(out.run);
      // Runs held here stop now; the others by the NOTIFY to their owner (or their flag, should it be lost), and a
      // queued one is finished by whoever gets to it: cancel() here, or the sweep.
      for (const id of interrupted) void deps.executor.cancel(id).catch(() => {});
      return { replayed: false, run: asAccepted(out.run), balance: out.balance, answer: out.answer };
    } finally {
      admission.release();
    }
  }

  return { accept };
}

/**
 * A run as its acceptance answers it: `queued`, not started. One claimed in the accepting statement is already
 * `executing` in Postgres (its provider may already have been asked), but it has produced nothing, and the answer
 * to an acceptance is what it always was: accepted, waiting for its first token.
 */
const asAccepted = (run: RunRow): RunRow => (run.state === 'executing' ? { ...run, state: 'queued', startedAt: null, seqCeiling: 0 } : run);

function contextTooLong(spec: AcceptSpec, inputTokens: number): AppError {
  return new AppError(400, 'context_length_exceeded', `the input (about ${inputTokens} tokens) and max tokens (${spec.maxTokens}) exceed the ${spec.model.contextTokens}-token context of ${spec.model.name}`, {
    inputTokens,
    maxTokens: spec.maxTokens,
    contextTokens: spec.model.contextTokens,
  });
}

export type Accept = ReturnType<typeof createAccept>['accept'];
