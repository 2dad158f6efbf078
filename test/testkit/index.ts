import type { Client } from './client.js';
import { sessionFlow } from './session-flow.js';

/** Every flow of the testkit, in order. */
export async function runAll(api: Client, log: (msg: string) => void = () => {}) {
  await sessionFlow(api, log);
}
