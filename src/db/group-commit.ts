/**
 * Group commit: work that arrives while one statement of its kind is in flight from this process waits for it, then
 * goes together with the rest that waited, as one statement. Nothing waits when nothing is in flight (a lone item is
 * sent at once, alone), and one statement of the kind is in flight at a time, so under load each commit serves many
 * items and when idle none is delayed.
 *
 * Why it cannot lose or reorder an item: every item is queued before `pump` looks, `pump` takes items off the queue
 * only into the batch it sends at once, and it looks again whenever a statement returns (however it ended). `pick`
 * may hold items back for a later batch (they keep their order in the queue); it must take at least one.
 */
export function groupCommit<W>(opts: {
  /** Split the queue, in order, into this batch and the rest (at least one item in the batch). */
  pick(waiting: W[]): { batch: W[]; later: W[] };
  /** Send one item alone (the single statement). Must settle each item it is given (never reject). */
  one(item: W): Promise<void>;
  /** Send a batch of two or more together. Must settle each item it is given (never reject). */
  many(batch: W[]): Promise<void>;
}) {
  let waiting: W[] = [];
  let inFlight = false;
  function pump() {
    if (inFlight || waiting.length === 0) return;
    const { batch, later } = opts.pick(waiting);
    waiting = later;
    inFlight = true;
    const done = batch.length === 1 ? opts.one(batch[0]!) : opts.many(batch);
    void done.finally(() => {
      inFlight = false;
      pump();
    });
  }
  return {
    add(item: W) {
      waiting.push(item);
      pump();
    },
  };
}

/** The plain `pick`: the first `max` in arrival order. */
export const firstOf =
  (max: number) =>
  <W>(waiting: W[]) => ({ batch: waiting.slice(0, max), later: waiting.slice(max) });
