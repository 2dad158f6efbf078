import { AsyncLocalStorage } from 'node:async_hooks';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { gzipSync } from 'node:zlib';
import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonBody } from '../src/http/json-body.js';
import { createServer } from '../src/http/server.js';

/**
 * The JSON body parser's direct path against body-parser's (`express.json`), on the same bytes: every answer — the
 * parsed body, or the error's status, `type` and message — must be the one body-parser gives, and the common case
 * must not go through body-parser at all.
 */
const LIMIT = 1024;
let viaBodyParser = 0;
const counted: RequestHandler = (() => {
  const general = express.json({ limit: LIMIT });
  return (req, res, next) => {
    viaBodyParser++;
    general(req, res, next);
  };
})();

function echoApp(parser: RequestHandler) {
  const app = express();
  app.use(parser);
  app.post('/', (req, res) => {
    res.json({ body: req.body === undefined ? '(undefined)' : req.body });
  });
  const onError: ErrorRequestHandler = (err, _req, res, _next) => {
    res.status(err.status ?? 500).json({ error: { status: err.status, type: err.type, message: err.message, expose: err.expose } });
  };
  app.use(onError);
  return app;
}

const servers: http.Server[] = [];
let reference = 0;
let direct = 0;
async function serve(app: express.Express) {
  const s = http.createServer(app);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as AddressInfo).port;
}
beforeAll(async () => {
  reference = await serve(echoApp(express.json({ limit: LIMIT })));
  direct = await serve(echoApp(jsonBody(LIMIT, counted)));
});
afterAll(() => Promise.all(servers.map((s) => new Promise((r) => s.close(r)))));

/** One raw request (exact bytes: headers as given, the body in the given pieces); resolves with status and body. */
function send(port: number, headers: Record<string, string>, pieces: Buffer[]): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let raw = '';
    sock.setEncoding('latin1');
    sock.on('data', (d) => (raw += d));
    sock.on('error', reject);
    sock.on('end', () => {
      const [head, ...rest] = raw.split('\r\n\r\n');
      const status = Number(head!.split(' ')[1]);
      const text = Buffer.from(rest.join('\r\n\r\n'), 'latin1').toString('utf8');
      resolve({ status, body: JSON.parse(text) });
    });
    const lines = ['POST / HTTP/1.1', 'Host: x', 'Connection: close', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    sock.write(`${lines.join('\r\n')}\r\n\r\n`);
    // Pieces apart, so a body split across reads (even inside a UTF-8 character) is read as one.
    (async () => {
      for (const p of pieces) {
        sock.write(p);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
  });
}

const json = (body: Buffer | string, extra: Record<string, string> = {}, type = 'application/json') => {
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body);
  return { headers: { 'Content-Type': type, 'Content-Length': String(bytes.length), ...extra }, pieces: [bytes] };
};

async function both(req: { headers: Record<string, string>; pieces: Buffer[] }) {
  const [a, b] = await Promise.all([send(reference, req.headers, req.pieces), send(direct, req.headers, req.pieces)]);
  return { reference: a, direct: b };
}

describe('jsonBody', () => {
  it('reads the common case itself, giving what body-parser gives', async () => {
    const cases = [
      json('{"request":"hi","max_tokens":5}'),
      json('  \n\t[1,2,{"a":null}]'),
      json('\ufeff{"bom":true}'),
      json('{"unicode":"é😀"}', {}, 'application/json; charset=utf-8'),
      json('{"x":1}', {}, 'Application/JSON; Charset=UTF-8'),
      json('{"nested":{"deep":[[[]]]}}'),
      json(`{"fill":"${'x'.repeat(LIMIT - 11)}"}`), // exactly at the limit
    ];
    for (const c of cases) {
      viaBodyParser = 0;
      const { reference: a, direct: b } = await both(c);
      expect(a.status, JSON.stringify(c.headers)).toBe(200);
      expect(b).toEqual(a);
      expect(viaBodyParser, `${c.pieces[0]}`).toBe(0);
    }
  });

  it('reads a body that arrives in pieces, split inside a UTF-8 character', async () => {
    const bytes = Buffer.from('{"text":"naïve café 😀 done"}');
    const at = bytes.indexOf(Buffer.from('😀')) + 2;
    const c = { ...json(bytes), pieces: [bytes.subarray(0, 5), bytes.subarray(5, at), bytes.subarray(at)] };
    viaBodyParser = 0;
    const { reference: a, direct: b } = await both(c);
    expect(b).toEqual(a);
    expect(b.body).toEqual({ body: { text: 'naïve café 😀 done' } });
    expect(viaBodyParser).toBe(0);
  });

  it("answers every refusal with body-parser's own error: status, type and message", async () => {
    const cases = [
      json('{"a":'), // malformed
      json('{"a":}'),
      json('"just a string"'), // strict: neither object nor array
      json('  42'),
      json('null'),
      json('true'),
      json('{"a":1} trailing'),
      json(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])), // invalid UTF-8: replacement characters, then valid JSON
      json(`{"fill":"${'x'.repeat(LIMIT)}"}`), // over the limit
      json('{"a":1}', {}, 'application/json; charset=latin1'), // unsupported charset
      json('{"a":1}', {}, 'text/plain'), // not JSON: no body parsed
      json(gzipSync('{"zipped":true}'), { 'Content-Encoding': 'gzip' }),
      json('{"a":1}', { 'Content-Encoding': 'compress' }),
      json(''), // empty: body-parser's {}
      {
        headers: { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' },
        pieces: [Buffer.from('7\r\n{"a":1}\r\n0\r\n\r\n')],
      },
    ];
    for (const c of cases) {
      const { reference: a, direct: b } = await both(c);
      expect(b, `${c.pieces[0]?.toString('latin1')} ${JSON.stringify(c.headers)}`).toEqual(a);
    }
    // And they are refusals where they should be.
    expect((await both(json('{"a":'))).direct.status).toBe(400);
    expect((await both(json(`{"fill":"${'x'.repeat(LIMIT)}"}`))).direct.status).toBe(413);
    expect((await both(json('{"a":1}', {}, 'application/json; charset=latin1'))).direct.status).toBe(415);
  });

  it('agrees with body-parser on arbitrary bytes (property)', async () => {
    const bodies = fc.oneof(
      fc.json().map((s) => Buffer.from(s)),
      fc.string({ unit: 'binary', maxLength: 60 }).map((s) => Buffer.from(s)),
      fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
    );
    await fc.assert(
      fc.asyncProperty(bodies, async (bytes) => {
        if (bytes.length === 0) return;
        const { reference: a, direct: b } = await both(json(bytes));
        expect(b).toEqual(a);
      }),
      { numRuns: 150, seed: Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31) },
    );
  });

  it('a client that leaves mid-body gets nothing parsed and leaves nothing waiting', async () => {
    let reached = 0;
    const errors: unknown[] = [];
    const app = express();
    app.use(jsonBody(LIMIT, counted));
    app.post('/', (_req, res) => {
      reached++;
      res.end();
    });
    const onError: ErrorRequestHandler = (err, _req, res, _next) => {
      errors.push(err);
      res.end();
    };
    app.use(onError);
    const port = await serve(app);
    const sock = net.connect(port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"half":');
    await new Promise((r) => setTimeout(r, 20));
    sock.destroy();
    const deadline = Date.now() + 5000;
    while (errors.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(reached).toBe(0);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ status: 400, type: 'request.aborted', message: 'request aborted' });
  });

  it('leaves an upgrade request (a WebSocket handshake) to body-parser, which reads no body from it', async () => {
    const results: unknown[] = [];
    for (const parser of [express.json({ limit: LIMIT }), jsonBody(LIMIT, counted)]) {
      const app = express();
      app.use(parser);
      app.get('/', (req, res) => res.json({ body: req.body ?? null }));
      const onError: ErrorRequestHandler = (err, _req, res, _next) => res.status(err.status ?? 500).json({ error: err.type });
      app.use(onError);
      // The app's own server: upgrade requests go through the app (src/http/upgrade.ts).
      const s = createServer(app, { HTTP_HEADERS_TIMEOUT_MS: 5000, HTTP_REQUEST_TIMEOUT_MS: 5000, MAX_CONNECTIONS: 0 });
      servers.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      const port = (s.address() as AddressInfo).port;
      const answer = await new Promise<string>((resolve, reject) => {
        const sock = net.connect(port, '127.0.0.1');
        let raw = '';
        sock.on('data', (d) => (raw += d));
        sock.on('error', reject);
        sock.on('close', () => resolve(raw));
        sock.write(
          'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}',
        );
        setTimeout(() => sock.end(), 200);
      });
      results.push(answer.split('\r\n')[0]);
      results.push(answer.slice(answer.indexOf('\r\n\r\n') + 4));
    }
    expect(results[0]).toBe('HTTP/1.1 200 OK');
    expect(results.slice(2)).toEqual(results.slice(0, 2));
  });

  it("calls back in the caller's async context, as body-parser does", async () => {
    const als = new AsyncLocalStorage<string>();
    const seen: unknown[] = [];
    for (const parser of [express.json({ limit: LIMIT }), jsonBody(LIMIT, counted)]) {
      const app = express();
      app.use((_req, _res, next) => als.run('the request', next));
      app.use(parser);
      app.post('/', (req, res) => {
        seen.push(als.getStore() ?? null);
        res.json({ body: req.body });
      });
      const port = await serve(app);
      const c = json('{"a":1}');
      expect((await send(port, c.headers, c.pieces)).body).toEqual({ body: { a: 1 } });
    }
    expect(seen).toEqual(['the request', 'the request']);
  });

  it('a request whose client went before the parser ran is passed on, not left waiting', async () => {
    const reached: string[] = [];
    for (const [name, parser] of [['body-parser', express.json({ limit: LIMIT })], ['jsonBody', jsonBody(LIMIT, counted)]] as const) {
      const app = express();
      // Something slow in front (an async check): the client has sent everything and gone by the time it is done.
      app.use(async (req, _res, next) => {
        await new Promise<void>((r) => (req.socket.destroyed ? r() : req.socket.once('close', () => r())));
        next();
      });
      app.use(parser);
      app.post('/', (_req, res) => {
        reached.push(name);
        res.end();
      });
      const onError: ErrorRequestHandler = (err, _req, res, _next) => {
        reached.push(`${name}: ${err.type}`);
        res.end();
      };
      app.use(onError);
      const port = await serve(app);
      const sock = net.connect(port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.end('POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}');
      sock.on('error', () => undefined);
      setTimeout(() => sock.destroy(), 20);
      const deadline = Date.now() + 5000;
      while (!reached.some((r) => r.startsWith(name)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    }
    expect(reached).toEqual(['body-parser', 'jsonBody']);
  });
});

