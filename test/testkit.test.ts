import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/global-setup.js';
import { startServerProcess, type ServerProcess } from './helpers/process.js';
import { client, type Client } from './testkit/client.js';
import { runAll } from './testkit/index.js';

/**
 * End to end: the real server process with its own embedded Postgres (as `npm start` runs it), or the
 * deployment at TESTKIT_BASE_URL, walked over HTTP by the testkit.
 */
let server: ServerProcess | null = null;
let dataDir: string | null = null;
let api: Client;

beforeAll(async () => {
  if (process.env.TESTKIT_BASE_URL) {
    api = client(process.env.TESTKIT_BASE_URL);
    return;
  }
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'sluice-testkit-'));
  chmodSync(dataDir, 0o755);
  server = await startServerProcess({ DATA_DIR: path.join(dataDir, 'data'), EMBEDDED_PG_PORT: String(await freePort()), DATABASE_URL: '' });
  api = client(server.url);
}, 120_000);

afterAll(async () => {
  if (server) {
    server.proc.kill('SIGTERM');
    expect(await server.exited).toBe(0);
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe('testkit', () => {
  it('walks the session, job, runs and OpenAI-face flows over HTTP', async () => {
    await runAll(api);
  });
});
