import { getHeapSpaceStatistics } from 'node:v8';

export interface SettledMemory {
  mem: NodeJS.MemoryUsage;
  /** Committed bytes of each V8 heap space (`space_size`), by name. */
  spaces: Record<string, number>;
}

const gc = () => (globalThis as { gc?: () => void }).gc?.();

/**
 * The process's memory once the garbage is gone and the pages it held are given back: full collections, then a
 * pause, then another. V8 returns freed pages to the OS from a background task (its unmapper), so the RSS read right
 * after `gc()` may still count pages about to go; the pause lets it finish, and the last collection tidies what the
 * pause allocated. Both servers of the memory benchmark (Sluice and the bare Node baseline) are read this way.
 */
export async function settledMemory(): Promise<SettledMemory> {
  for (let i = 0; i < 3; i++) gc();
  await new Promise((r) => setTimeout(r, 300));
  gc();
  return {
    mem: process.memoryUsage(),
    spaces: Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size])),
  };
}
