import { isFinal, readSse, type SseEvent } from './sse.js';

export interface Followed {
  /** Every event with an id, across every connection, in the order received. */
  events: SseEvent[];
  /** The final events received (a correct server sends exactly one). */
  finals: SseEvent[];
  /** Connections made. */
  connections: number;
  /** A reconnect answered 204 ("nothing more") although no final event had arrived: the outcome was lost. */
  lostOutcome: boolean;
  /** An answer that is neither a stream, 204, nor 503 (e.g. 404, 500), with its body. */
  refused?: { status: number; body: string };
}

/**
 * Read a run's stream the way EventSource does, through crashes and outages: reconnect after a dropped connection
 * with `Last-Event-ID` set to the last id received, stop at the final event or at `204`. Unlike EventSource, a
 * `503` (database down) or a refused connection (server restarting) is retried too, until `deadline`.
 */
export async function followRun(url: () => string, headers: Record<string, string>, opts: { deadline: number; retryMs?: number }): Promise<Followed> {
  const out: Followed = { events: [], finals: [], connections: 0, lostOutcome: false };
  let last: string | undefined;
  while (Date.now() < opts.deadline && out.finals.length === 0) {
    out.connections++;
    try {
      const res = await readSse(url(), {
        headers: { ...headers, ...(last ? { 'Last-Event-ID': last } : {}) },
        onEvent: (e) => {
          if (e.id === undefined) return;
          last = e.id;
          out.events.push(e);
          if (isFinal(e)) out.finals.push(e);
        },
      });
      if (res.status === 204) {
        out.lostOutcome = out.finals.length === 0;
        return out;
      }
      if (res.status !== 200 && res.status !== 503) {
        out.refused = { status: res.status, body: res.raw.slice(0, 300) };
        return out;
      }
    } catch {
      // connection refused or dropped: the server is restarting, or went away mid-stream
    }
    if (out.finals.length === 0) await new Promise((r) => setTimeout(r, opts.retryMs ?? 150));
  }
  return out;
}
