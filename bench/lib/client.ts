import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export const now = () => performance.timeOrigin + performance.now();

export interface Reply {
  status: number;
  body: any;
  headers: http.IncomingHttpHeaders;
}

/** A keep-alive JSON client for one server (node:http: far lighter than fetch for a load generator). */
export function jsonClient(base: string, maxSockets = 64) {
  const url = new URL(base);
  const agent = new http.Agent({ keepAlive: true, maxSockets });
  function request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: url.hostname,
          port: url.port,
          method,
          path,
          agent,
          headers: { ...headers, ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : null;
            } catch {}
            resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
          });
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      if (payload) req.write(payload);
      req.end();
    });
  }
  return { request, close: () => agent.destroy() };
}

export interface Session {
  id: string;
  token: string;
  auth: Record<string, string>;
}

/** A session paid through the stub, as a client would make one. */
export async function paidSession(c: ReturnType<typeof jsonClient>, sats: number): Promise<Session> {
  const created = await c.request('POST', '/api/sessions', { amount_sats: sats });
  if (created.status !== 201) throw new Error(`session: ${created.status} ${JSON.stringify(created.body)}`);
  const paid = await c.request('POST', `/api/dev/stub/pay/${created.body.invoice.paymentHash}`);
  if (paid.status !== 200) throw new Error(`pay: ${paid.status}`);
  return { id: created.body.sessionId, token: created.body.sessionToken, auth: { authorization: `Bearer ${created.body.sessionToken}` } };
}

export interface SseReader {
  /** Arrival time (ms since epoch, µs precision) of each event id received, by id. */
  arrivals: Map<number, number>;
  /** Resolves when the stream ends (the server closed it, or `close`); with the HTTP status. */
  done: Promise<number>;
  /** Resolves once the response headers arrived. */
  opened: Promise<number>;
  events: number;
  close(): void;
}

/**
 * A lean SSE reader over a raw socket: writes the GET, then records the arrival time of each `id:` line. Our
 * frames are written whole, each in its own HTTP chunk, so a line is never cut by chunk framing; a line cut
 * between two socket reads is carried over. Chunk-size lines and pings are ignored.
 */
export function readSse(base: string, path: string, headers: Record<string, string> = {}, opts: { keepArrivals?: boolean } = {}): SseReader {
  const url = new URL(base);
  const arrivals = new Map<number, number>();
  const keep = opts.keepArrivals ?? true;
  const sock = net.connect(Number(url.port), url.hostname);
  sock.setNoDelay(true);
  let head = true;
  let carry = '';
  let status = 0;
  let resolveOpened!: (s: number) => void;
  const opened = new Promise<number>((r) => (resolveOpened = r));
  const reader: SseReader = {
    arrivals,
    opened,
    events: 0,
    done: new Promise<number>((resolve) => {
      sock.on('close', () => {
        resolveOpened(status);
        resolve(status);
      });
      sock.on('error', () => {});
    }),
    close: () => sock.destroy(),
  };
  const extra = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  sock.write(`GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\nAccept: text/event-stream\r\n${extra}\r\n`);
  sock.setEncoding('utf8');
  sock.on('data', (data: string) => {
    const t = now();
    let text = carry + data;
    if (head) {
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) {
        carry = text;
        return;
      }
      status = Number(text.slice(9, 12));
      resolveOpened(status);
      head = false;
      text = text.slice(end + 4);
      if (status !== 200) {
        sock.destroy();
        return;
      }
    }
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      if (text.startsWith('id: ', start)) {
        reader.events++;
        if (keep) arrivals.set(Number(text.slice(start + 4, nl)), t);
      } else if (nl === start + 2 && text.startsWith('0\r', start)) {
        // The last chunk: the server ended the response (the connection itself is kept alive).
        sock.destroy();
        return;
      }
      start = nl + 1;
    }
    carry = text.slice(start);
  });
  return reader;
}
