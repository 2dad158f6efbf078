/**
 * Who owns and pays for a run, as a front door authenticated it. The engine (`src/runs/`) takes this and never
 * a door's own row, so it imports no front door. Today every payer is a prepaid session; a job's run is paid
 * by its invoice and never accepted through here.
 */
export interface Principal {
  kind: 'session';
  sessionId: string;
}

export const sessionPrincipal = (session: { id: string }): Principal => ({ kind: 'session', sessionId: session.id });
