/**
 * Who owns and pays for a run, as a front door authenticated it. The engine (`src/runs/`) takes this and never
 * a door's own row, so it imports no front door. Today every payer is a prepaid session; a job's run is paid
 * by its invoice and never accepted through here.
 */
export interface Principal {
  kind: 'session';
  /** The session; null only with a `credential` whose token alone names it (the `/v1` face has no id in its paths). */
  sessionId: string | null;
  /**
   * Set when the door has not authenticated the session yet (its hot path): the engine checks the token's hash in
   * the very statement that debits the session, so accepting costs one round trip. When that statement refuses, or
   * the engine refuses before it, `verify` gives the door's own answer first (401, 404, an expired session marked
   * expired and refused 409), exactly as if it had authenticated up front; it resolves with the session's id if the
   * session is fine.
   */
  credential?: { tokenHash: string; verify(): Promise<string> };
  /**
   * The request's pending count against its session's budget (limits/session-budget.ts), made by the accept
   * statement; `settle` answers it (429 if the budget is spent, in which case the statement took nothing).
   */
  count?: { key: string; limit: number; windowMs: number; settle(counted: { points: number; expire: number }): void };
}

export const sessionPrincipal = (session: { id: string }): Principal => ({ kind: 'session', sessionId: session.id });
