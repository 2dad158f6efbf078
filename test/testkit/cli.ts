/**
 * Run the testkit against a deployment: `npx tsx test/testkit/cli.ts http://host:3000`
 * (or TESTKIT_BASE_URL). The target must use the stub payment provider outside production.
 */
import { client } from './client.js';
import { runAll } from './index.js';

const base = process.argv[2] ?? process.env.TESTKIT_BASE_URL;
if (!base) {
  console.error('usage: tsx test/testkit/cli.ts <base-url>   (or set TESTKIT_BASE_URL)');
  process.exit(2);
}
runAll(client(base), (m) => console.log(m)).then(
  () => console.log('testkit: all flows passed'),
  (err) => {
    console.error(`testkit: FAILED: ${err instanceof Error ? err.message : err}`);
    process.exit(1);
  },
);
