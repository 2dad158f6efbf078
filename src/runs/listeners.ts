/**
 * Listeners by key (a run id, a session id): a bus event for one key costs O(its listeners), not O(every listener),
 * as one bus listener per reader would. A key's set goes when its last listener does.
 */
export function keyedListeners<T>() {
  const sets = new Map<string, Set<(value: T) => void>>();
  return {
    /** Call `fn` with every value told to `key`; returns the unsubscribe. */
    on(key: string, fn: (value: T) => void): () => void {
      let set = sets.get(key);
      if (!set) sets.set(key, (set = new Set()));
      set.add(fn);
      return () => {
        set.delete(fn);
        if (set.size === 0 && sets.get(key) === set) sets.delete(key);
      };
    },
    tell(key: string | null, value: T): void {
      const set = key === null ? undefined : sets.get(key);
      if (set) for (const fn of set) fn(value);
    },
    /** Keys with at least one listener. */
    get size() {
      return sets.size;
    },
  };
}
