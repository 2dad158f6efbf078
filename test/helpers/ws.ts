import { vi } from 'vitest';
import WebSocket from 'ws';
import type { TestServer } from './context.js';
import { expectNoLeaks } from './sessions.js';
import { waitFor } from './wait.js';

export type WsMessage = Record<string, any>;

/** The last few messages, each cut short (an error message must stay readable). */
const tail = (ms: WsMessage[]) => ms.slice(-5).map((m) => JSON.stringify(m).slice(0, 200));

/**
 * A `ws` client for the tests: every message it received, in order, and waits on them with a deadline (never a
 * sleep). `open` resolves once the socket is open, or rejects with the HTTP status of a refused upgrade.
 */
export class WsClient {
  readonly messages: WsMessage[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  #wake = new Set<() => void>();

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      this.messages.push(JSON.parse(data.toString()));
      for (const w of this.#wake) w();
    });
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    void this.closed.then(() => {
      for (const w of this.#wake) w();
    });
  }

  /** Open `url` (http:// or ws://; `/api/ws` unless the URL has a path), with a token in the query, a header, or none. */
  static open(base: string, opts: { token?: string; header?: string; headers?: Record<string, string>; path?: string } = {}): Promise<WsClient> {
    const u = new URL(opts.path ?? '/api/ws', base.replace(/^http/, 'ws'));
    if (opts.token) u.searchParams.set('access_token', opts.token);
    const headers = { ...opts.headers, ...(opts.header ? { authorization: `Bearer ${opts.header}` } : {}) };
    const ws = new WebSocket(u, { headers });
    const client = new WsClient(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d));
        res.on('end', () => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, body: body ? JSON.parse(body) : null })));
      });
      ws.once('error', reject);
    });
  }

  send(m: unknown): void {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }

  /** The first message (from index `from`) that `pred` accepts, waiting for it up to `timeoutMs`. */
  async wait(pred: (m: WsMessage) => boolean, opts: { timeoutMs?: number; from?: number; what?: string } = {}): Promise<WsMessage> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    let from = opts.from ?? 0;
    for (;;) {
      for (; from < this.messages.length; from++) if (pred(this.messages[from]!)) return this.messages[from]!;
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`the socket closed before ${opts.what ?? 'the message'} came: ${tail(this.messages)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${opts.what ?? 'a message'}; last: ${tail(this.messages)}`);
      await new Promise<void>((resolve) => {
        const w = () => {
          clearTimeout(t);
          this.#wake.delete(w);
          resolve();
        };
        const t = setTimeout(w, left);
        this.#wake.add(w);
      });
    }
  }

  /** Send and wait for the answer after it (the first message from now that `pred` accepts). */
  async ask(m: unknown, pred: (m: WsMessage) => boolean, what?: string): Promise<WsMessage> {
    const from = this.messages.length;
    this.send(m);
    return this.wait(pred, { from, what });
  }

  /** The `event` messages of `runId`. */
  events(runId: string): WsMessage[] {
    return this.messages.filter((m) => m.type === 'event' && m.runId === runId);
  }

  /** Wait for the final event of `runId`. */
  final(runId: string, timeoutMs = 15_000): Promise<WsMessage> {
    return this.wait((m) => m.type === 'event' && m.runId === runId && (m.event === 'done' || m.event === 'error'), { timeoutMs, what: `the final event of ${runId}` });
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close();
    return this.closed;
  }
}

/** Open a socket and authenticate it with its first message. */
export async function authed(base: string, token: string): Promise<WsClient> {
  const c = await WsClient.open(base);
  await c.ask({ type: 'auth', token }, (m) => m.type === 'authenticated' || m.type === 'error', 'authenticated');
  if (c.messages.at(-1)!.type !== 'authenticated') throw new Error(`auth refused: ${JSON.stringify(c.messages.at(-1))}`);
  return c;
}

export const seqs = (events: WsMessage[]) => events.map((e) => e.seq as number);
export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** An `error` message (of `runId`, if given). */
export const isError = (runId?: string) => (m: WsMessage) => m.type === 'error' && (runId === undefined || m.runId === runId);

/** Nothing left behind: no registry entry or subscriber, no stream counted, no socket open. */
export async function noSocketLeaks(t: TestServer) {
  await expectNoLeaks(t);
  await waitFor(() => t.ctx.sockets.size === 0, { what: 'no open socket' });
}

/** Stream slots live in Postgres now (every process's). */
export const liveSlots = async (x: TestServer) => (await x.ctx.database.pool.query<{ n: number }>('select count(*)::int as n from stream_slots where expires_at > now()')).rows[0]!.n;

/** Everything a socket can hold, back to zero: registry, followers, news, per-IP counts, stream slots (here and in Postgres). */
export async function nothingHeld(x: TestServer) {
  await noSocketLeaks(x);
  await waitFor(() => x.ctx.followers.size === 0 && x.ctx.limits.streamSlotsHeld === 0 && x.ctx.sse.size === 0, {
    what: `nothing held (followers ${x.ctx.followers.size}, slots ${x.ctx.limits.streamSlotsHeld})`,
  });
  await waitFor(async () => (await liveSlots(x)) === 0, { what: 'no stream slot row' });
}

const send = WebSocket.prototype.send;

/**
 * The most a server socket of this process held unsent right after a write (messages of `ignoreOver` bytes or more
 * left out), while `fn` runs: what a reader that does not read costs the server.
 */
export async function serverBuffers(fn: (most: () => number) => Promise<void>, ignoreOver = Infinity): Promise<number> {
  let most = 0;
  const spy = vi.spyOn(WebSocket.prototype, 'send').mockImplementation(function (this: WebSocket, ...args: Parameters<WebSocket['send']>) {
    send.call(this, ...args);
    const size = (args[0] as unknown as { length: number }).length;
    if ((this as unknown as { _isServer: boolean })._isServer && size < ignoreOver) most = Math.max(most, this.bufferedAmount);
  });
  try {
    await fn(() => most);
  } finally {
    spy.mockRestore();
  }
  return most;
}
