import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The HTTP half shared by the fake model servers (`openai-chat.ts`, `anthropic-messages.ts`): a real socket, every
 * request recorded with its headers and parsed body, a queue of plans saying what to do with the next request,
 * and the one thing a fake must observe for the abort tests — whether the client closed the connection before
 * the response ended. Each protocol module formats the bytes.
 */
export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  /** The parsed JSON body (undefined when it was not JSON). */
  body: any;
  /** When it arrived (ms, Date.now()). */
  at: number;
  /** True once the client closed the connection before the response was complete. */
  clientClosed: boolean;
  /** Resolves when the response's connection closed, whoever closed it. */
  closed: Promise<void>;
}

/** A normal streamed reply, with the ways it can go wrong. Counts are of text chunks (one SSE event each). */
export interface ReplyPlan {
  type: 'reply';
  /** The text, chunk by chunk: a chunk is often more than one token (default: a short sentence in 4 chunks). */
  chunks?: string[];
  /** Why the model stops (default `stop`). */
  stop?: 'stop' | 'max_tokens' | 'content_filter';
  /** OpenAI only: usage in its own last chunk (`include_usage`, the default), on the finish chunk, or not at all. */
  usage?: 'separate' | 'with-finish' | 'none';
  /** Between events, ms (default 2). */
  gapMs?: number;
  /** Stop sending after this many chunks and keep the connection open (silence); 0: before the first. */
  stallAfter?: number;
  /** Drop the connection after this many chunks: `reset` destroys the socket, `eof` ends the body cleanly without the end marker. */
  cutAfter?: number;
  cutHow?: 'reset' | 'eof';
  /** Send an error event inside the 200 stream after this many chunks (Anthropic's `event: error`, OpenAI's `data: {"error":…}`). */
  errorAfter?: number;
}

/** An HTTP error as the provider sends it. */
export interface ErrorPlan {
  type: 'error';
  status: number;
  /**
   * Which of the provider's errors (each module shapes the body). `echo_key`: a 401 whose message repeats the
   * whole key it was sent, as a careless proxy in front of a model might.
   */
  error: 'rate_limit' | 'server' | 'overloaded' | 'context_length' | 'model_not_found' | 'echo_key';
  /** `retry-after` (seconds), as sent. */
  retryAfter?: string;
}

export type Plan = ReplyPlan | ErrorPlan;

export const DEFAULT_CHUNKS = ['Sluice gates', ' open at dawn,', ' and the water', ' runs to the mill.'];

export interface FakeHttp {
  url: string;
  requests: RecordedRequest[];
  /** Plans for the next requests, in order; a request with none gets the default reply. */
  plans: Plan[];
  close(): Promise<void>;
}

export interface Exchange {
  req: RecordedRequest;
  res: ServerResponse;
  plan: Plan;
}

/** Start a fake on a free port; `handle` answers every request (after it is recorded and its plan taken). */
export async function startFakeHttp(handle: (x: Exchange) => Promise<void>): Promise<FakeHttp> {
  const requests: RecordedRequest[] = [];
  const plans: Plan[] = [];
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
      let resolveClosed!: () => void;
      const rec: RecordedRequest = { method: req.method!, path: req.url!, headers: req.headers, body, at: Date.now(), clientClosed: false, closed: new Promise((r) => (resolveClosed = r)) };
      res.on('close', () => {
        if (!res.writableFinished) rec.clientClosed = true;
        resolveClosed();
      });
      requests.push(rec);
      const plan = plans.shift() ?? { type: 'reply' };
      handle({ req: rec, res, plan }).catch(() => res.destroy());
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    plans,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Writes SSE bytes as a provider does: each event flushed at once, with a gap, until the client goes away. */
export function sseWriter(x: Exchange, gapMs: number) {
  let gone = false;
  x.res.on('close', () => (gone = true));
  return {
    get gone() {
      return gone;
    },
    async send(raw: string) {
      if (gone) return;
      x.res.write(raw);
      await sleep(gapMs);
    },
    /** Silence: send nothing more; resolve when the client hangs up. */
    stall: () => x.req.closed,
    /** End the stream: cleanly, or by dropping the socket mid-body (no terminating chunk). */
    cut(how: 'reset' | 'eof') {
      if (how === 'reset') x.res.socket?.destroy();
      else x.res.end();
    },
    end() {
      if (!gone) x.res.end();
    },
  };
}

/** A provider's request id: `req_` and 24 random hex digits (both OpenAI and Anthropic use this prefix). */
export const requestId = () => `req_${Array.from({ length: 24 }, () => Math.floor(Math.random() * 16).toString(16)).join('')}`;

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), ...headers });
  res.end(text);
}
