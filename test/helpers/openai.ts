import OpenAI from 'openai';
import { afterAll, beforeAll, expect } from 'vitest';
import { freshDatabaseUrl } from './db.js';
import { startServerProcess, type ServerProcess } from './process.js';
import { waitFor } from './wait.js';

/** The real server in a child process (as `npm start` runs it) on a fresh database of the test cluster. */
export interface V1Server extends ServerProcess {
  /** A paid session and an `openai` client whose API key is its token. */
  session(amountSats?: number, opts?: ConstructorParameters<typeof OpenAI>[0]): Promise<{ id: string; token: string; client: OpenAI }>;
  /** A session's ledger over the native API (the sum of its entries is its balance). */
  ledger(s: { id: string; token: string }): Promise<{ balanceSats: number; entries: Array<{ kind: string; amountSats: number; runId: string | null }> }>;
  /** Native API calls. */
  api(method: string, path: string, token?: string, body?: unknown): Promise<{ status: number; body: any; headers: Headers }>;
  /**
   * How many requests the server has logged for `method path` (the request log's completion lines), once every
   * request sent before this call is in the log: a sentinel request is logged after them, so we wait for it.
   */
  requestsTo(method: string, path: string): Promise<number>;
  stop(): Promise<void>;
}

export async function startV1Server(env: Record<string, string> = {}): Promise<V1Server> {
  const proc = await startServerProcess({
    DATABASE_URL: await freshDatabaseUrl(),
    STUB_TOKEN_DELAY_MS: '2',
    STUB_OUTPUT_TOKENS: '12',
    EVENT_FLUSH_MS: '10',
    SSE_POLL_MS: '50',
    SWEEP_INTERVAL_S: '3600',
    ...env,
  });
  async function api(method: string, path: string, token?: string, body?: unknown) {
    const res = await fetch(`${proc.url}${path}`, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
  }
  return {
    ...proc,
    api,
    async session(amountSats = 5000, opts = {}) {
      const created = await api('POST', '/api/sessions', undefined, { amount_sats: amountSats });
      expect(created.status).toBe(201);
      expect((await api('POST', `/api/dev/stub/pay/${created.body.invoice.paymentHash}`)).status).toBe(200);
      const token = created.body.sessionToken as string;
      return { id: created.body.sessionId as string, token, client: new OpenAI({ baseURL: `${proc.url}/v1`, apiKey: token, ...opts }) };
    },
    async ledger(s) {
      const res = await api('GET', `/api/sessions/${s.id}/ledger`, s.token);
      expect(res.status).toBe(200);
      const sum = res.body.entries.reduce((a: number, e: { amountSats: number }) => a + e.amountSats, 0);
      expect(sum).toBe(res.body.balanceSats);
      return res.body;
    },
    async requestsTo(method, path) {
      const sentinel = `/v1/models?sentinel=${Math.random().toString(36).slice(2)}`;
      await fetch(`${proc.url}${sentinel}`);
      await waitFor(() => proc.output().includes(sentinel), { what: 'the sentinel request in the log' });
      let n = 0;
      for (const line of proc.output().split('\n')) {
        if (!/"msg":"request (completed|errored|aborted)"/.test(line)) continue;
        try {
          const j = JSON.parse(line);
          if (j.req?.method === method && j.req?.url === path) n++;
        } catch {}
      }
      return n;
    },
    async stop() {
      proc.proc.kill('SIGTERM');
      expect(await proc.exited).toBe(0);
    },
  };
}

/** The `sluice` extension of a /v1 object: its run and its money. */
export const sluiceOf = (r: object) => (r as { sluice: { run_id: string; debited_sats: number; charged_sats: number; refunded_sats: number } }).sluice;
/** The run of a Response. */
export const runIdOf = (r: object) => sluiceOf(r).run_id;

/** Start the server process before the file's tests and stop it after them; call the result for the server. */
export function useV1Server(env: Record<string, string> = {}): () => V1Server {
  let srv: V1Server | undefined;
  beforeAll(async () => {
    srv = await startV1Server(env);
  }, 120_000);
  afterAll(() => srv?.stop());
  return () => srv!;
}
