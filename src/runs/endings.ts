import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Bus } from '../bus.js';
import type { Finished, Finisher, Outcome } from './finish.js';
import type { Registry, RunEntry, RunEvent } from './registry.js';
import { retried } from './retry.js';
import type { RunRow } from './store.js';

/**
 * How a run's end reaches everyone in this process (the executor's, split out of it): the finish, retried while
 * Postgres is unwell; its final event published to the readers here; the bus told; or, when the end cannot be
 * recorded at all, the run given up to recovery.
 */
export function createEndings(opts: {
  registry: Registry;
  bus: Bus;
  log: Logger;
  instanceId: string;
  finisher: Finisher;
  /** Runs given up to recovery (shared with the executor: not renewed, swept). */
  abandoned: Set<string>;
  onFinish?: (run: RunRow, events: () => RunEvent[] | null) => void;
}) {
  /**
   * Publish a finish to whoever watches here, then let the registry forget the run. `ownLog`: the finisher was the
   * owner, so what this process published is exactly the log Postgres now has (a recovered run's memory may hold
   * tokens Postgres never got: it is not offered as the run's log).
   */
  function announce(entry: RunEntry | undefined, fin: Finished | undefined, ownLog: boolean) {
    if (fin && entry) {
      entry.state = fin.run.state;
      opts.registry.publish(entry.runId, fin.final);
    }
    // Before `end`, which may drop the entry: the log is copied only if the listener asks for it.
    if (fin?.won && opts.onFinish) {
      opts.onFinish(fin.run, () => {
        const snap = entry && ownLog ? opts.registry.snapshot(entry.runId, 0) : null;
        return snap?.complete ? snap.events : null;
      });
    }
    if (entry) opts.registry.end(entry.runId);
    if (!fin?.won) return;
    const r = fin.run;
    opts.bus.emit('run:finish', { runId: r.id, kind: r.kind, state: r.state, sessionId: r.sessionId, jobId: r.jobId });
    if (r.kind === 'session' && r.sessionId) {
      opts.bus.emit('session:request:complete', { sessionId: r.sessionId, requestId: r.id, state: r.state });
    }
  }

  const retrying = <T>(what: string, runId: string, fn: () => Promise<T>) => retried(opts.log, what, runId, fn);

  /**
   * Give a run up to recovery (place 2 of the model in executor.ts): stop renewing its lease, end its entry without a final
   * event (we do not know the outcome Postgres will record), and let the sweeper finish it once Postgres is back.
   */
  function abandon(runId: string, err: unknown) {
    opts.log.error({ err, runId }, 'could not record the state of a run; leaving it to recovery');
    opts.abandoned.add(runId);
    const entry = opts.registry.get(runId);
    if (entry && !entry.ended) {
      if (!entry.controller.signal.aborted) entry.controller.abort('interrupted');
      opts.registry.end(runId);
    }
    opts.bus.emit('run:abandoned', { runId });
  }

  /**
   * Finish (retrying while Postgres is unwell), then announce; if it cannot be recorded at all, abandon the run.
   * With `published` (the owner finishing its own run: it knows everything the finish needs) the finish is one
   * statement; without it, a locked read first (finish.ts).
   */
  async function finishAndAnnounce(entry: RunEntry | undefined, runId: string, outcome: Outcome, pending: RunEvent[] = [], published?: number) {
    let fin: Finished | undefined;
    const own = entry && published !== undefined && entry.row.leaseOwner === opts.instanceId ? entry : undefined;
    // One token for every try: a try whose commit we never heard of is then recognised as ours by the next (finish.ts).
    const token = randomUUID();
    try {
      fin = await retrying('finishing a run', runId, () =>
        own
          ? opts.finisher.owned(own.row, opts.instanceId, outcome, pending, published!, own.outputTokens, own.result, token)
          : opts.finisher.any(runId, outcome, pending, published, undefined, token),
      );
    } catch (err) {
      abandon(runId, err);
      return undefined;
    }
    announce(entry, fin, published !== undefined);
    return fin;
  }

  return { announce, abandon, finishAndAnnounce };
}

export type Endings = ReturnType<typeof createEndings>;
