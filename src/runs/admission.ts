/** Why a request cannot be accepted now: this process is shutting down, or its queue is full. */
export type Refusal = 'shutting_down' | 'overloaded';

/**
 * The right to accept one run, taken before its debit. `claim`: an execution slot is held for it, so the accept
 * inserts the run `executing` under our lease (claimed in the statement that accepts it) and it starts at once;
 * otherwise it is inserted `queued`, into the shared queue, for any process to claim (runs/queue.ts).
 */
export interface Admission {
  readonly claim: boolean;
  release(): void;
}

/**
 * Who may be accepted, and whether as a run that starts at once: this process's slots (WORKER_CONCURRENCY; none in
 * the `api` role) and the shared queue (MAX_QUEUED_RUNS), counted with the requests whose debit is in flight.
 *
 * Why it cannot overshoot its slots: everything here is synchronous. A slot is counted as taken (`reserved`) from
 * `admit` until the run is running, and so are the slots a claim in flight asked for (`claiming`); two requests
 * admitted in one tick see each other's reservations. A refusal comes before any money moves. The queue's depth is
 * an estimate (the last count Postgres gave, plus what this process queued since, minus what it claimed): the bound
 * protects clients from waiting minutes behind a fast 202, it is not an exact count across the fleet.
 */
export function createAdmission(o: {
  maxConcurrent: number;
  maxQueued: number;
  /** The most runs of one session this process starts at once on the fast path (the queue's cap, here). */
  sessionCap: number;
  /** Runs of this session (or job) running here. */
  runningOf: (key: string) => number;
  /** Runs in the shared queue (an estimate). */
  queued: () => number;
  running: () => number;
  /** Slots a claim in flight asked for. */
  claiming: () => number;
  /** A slot held for a run that was refused (or queued after all) is free again. */
  slotFreed: () => void;
}) {
  let accepting = true;
  /** Requests between the accepting check and their run's hand-over (their debit is in flight); drain waits for them. */
  let admitting = 0;
  let reserved = 0;
  let reservedQueued = 0;
  const slotFree = () => o.running() + reserved + o.claiming() < o.maxConcurrent;
  const queueFull = () => o.queued() + reservedQueued >= o.maxQueued;
  return {
    /** Slots held for runs being accepted (not running yet). */
    get reserved() {
      return reserved;
    },
    get accepting() {
      return accepting;
    },
    get admitting() {
      return admitting;
    },
    /** No more: shutdown has begun. */
    close() {
      accepting = false;
    },
    /** No slot is free and MAX_QUEUED_RUNS runs already wait. */
    get overloaded() {
      return !slotFree() && queueFull();
    },
    /**
     * The right to accept one run, or why not. `claimable`: it may start at once (it waits for no earlier turn).
     * `key`: its session, when known before the accept (the fast path keeps the per-session cap too).
     */
    admit(claimable: boolean, key?: string | null): Admission | Refusal {
      if (!accepting) return 'shutting_down';
      const claim = claimable && slotFree() && (!key || o.runningOf(key) < o.sessionCap);
      if (!claim && queueFull()) return 'overloaded';
      admitting++;
      if (claim) reserved++;
      else reservedQueued++;
      let released = false;
      return {
        claim,
        release() {
          if (released) return;
          released = true;
          admitting--;
          if (claim) reserved--;
          else reservedQueued--;
          if (claim) o.slotFreed();
        },
      };
    },
  };
}
