import type { Client } from './client.js';
import { jobFlow } from './job-flow.js';
import { responsesFlow } from './responses-flow.js';
import { runsFlow } from './runs-flow.js';
import { sessionFlow } from './session-flow.js';

/** Every flow of the testkit, in order. */
export async function runAll(api: Client, log: (msg: string) => void = () => {}) {
  const session = await sessionFlow(api, log);
  await jobFlow(api, log);
  await runsFlow(api, session, log);
  await responsesFlow(api, log);
}
