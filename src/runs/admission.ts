/** Why a request cannot be accepted now: this process is shutting down, or its queue is full. */
export type Refusal = 'shutting_down' | 'overloaded';

/**
 * The right to accept one run, taken before its debit. `claim`: an execution slot is held for it, so the accept
 * inserts the run `executing` under our lease (claimed in the statement that accepts it) and it starts at once;
 * otherwise it is inserted `queued` and waits here for a slot.
 */
export interface Admission {
  readonly claim: boolean;
  release(): void;
}

/**
 * Who may be accepted, and whether as a run that starts at once: the executor's slots (MAX_CONCURRENT_RUNS) and its
 * queue (MAX_QUEUED_RUNS), counted with the requests whose debit is in flight.
 *
 * Why it cannot overshoot: everything here is synchronous. A slot is counted as taken (`reserved`) from `admit`
 * until the run is running, and a queued place (`reservedQueued`) until the run is waiting; two requests admitted in
 * one tick see each other's reservations. A refusal comes before any money moves.
 */
export function createAdmission(o: {
  maxConcurrent: number;
  maxQueued: number;
  /** Runs waiting for a slot, running, and parked behind an earlier turn. */
  waiting: () => number;
  running: () => number;
  parked: () => number;
  /** A slot held for a run that was refused (or queued after all) is free again. */
  slotFreed: () => void;
}) {
  let accepting = true;
  /** Requests between the accepting check and their run's hand-over (their debit is in flight); drain waits for them. */
  let admitting = 0;
  let reserved = 0;
  let reservedQueued = 0;
  const slotFree = () => o.waiting() === 0 && o.running() + reserved < o.maxConcurrent;
  const queueFull = () => o.waiting() + o.parked() + reservedQueued >= o.maxQueued;
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
    /** The right to accept one run, or why not. `claimable`: it may start at once (it waits for no earlier turn). */
    admit(claimable: boolean): Admission | Refusal {
      if (!accepting) return 'shutting_down';
      const claim = claimable && slotFree();
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
