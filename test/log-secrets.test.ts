import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import supertest from 'supertest';
import { afterAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { createDatabase } from '../src/db/pool.js';
import fc from 'fast-check';
import { createSafeLogger, REDACT_PATHS, requestLineRedaction, scrubAll, scrubSecrets } from '../src/log-safety.js';
import { freshDatabaseUrl } from './helpers/db.js';
import { startServerProcess } from './helpers/process.js';
import { readSse } from './helpers/sse.js';

/**
 * No secret in any log line (issue #9, finding 6): bearer tokens (header or `?access_token=`), provider keys,
 * macaroons, preimages, passwords — whether they arrive in a request, sit in an object we log, or are bound into a
 * query that fails.
 */
const secret = (what: string) => `${what}-${randomBytes(12).toString('hex')}`;
const collect = () => {
  const lines: string[] = [];
  return { lines, log: createSafeLogger({ level: 'trace', destination: { write: (s: string) => void lines.push(s) } }) };
};

describe('the logger', () => {
  it('redacts secrets in fields by name, at any of the usual depths, and inside strings', () => {
    const { lines, log } = collect();
    const s = { key: secret('key'), admin: secret('admin'), mac: secret('mac'), pre: secret('pre'), pw: secret('pw'), tok: `sk_${randomBytes(32).toString('base64url')}` };
    log.info({ apiKey: s.key, provider: { adminKey: s.admin, macaroon: s.mac }, payment: { result: { preimage: s.pre } } }, 'fields');
    log.info({ req: { headers: { authorization: `Bearer ${s.tok}`, 'x-api-key': s.key }, query: { access_token: s.tok } } }, 'request');
    log.warn({ url: `postgres://sluice:${s.pw}@db:5432/sluice`, note: `called with Bearer ${s.tok} and ?access_token=${s.tok}&x=1` }, 'strings');
    const out = lines.join('');
    for (const v of Object.values(s)) expect(out).not.toContain(v);
    expect(out).toContain('[redacted]');
  });

  it('redacts the request line (its own fast path) exactly as the logger redacts it', () => {
    const { lines, log } = collect();
    const plain = log.child({}, { redact: { paths: [] } });
    const redact = requestLineRedaction();
    // Every name a path can reach in headers (lower case, as Node gives them) and in the query (as sent), and others.
    const names = [...new Set(REDACT_PATHS.map((p) => p.split(/[.[\]"]+/).filter(Boolean).at(-1)!))];
    const lines2: Array<Record<string, unknown>> = [
      { host: 'x', accept: '*/*' },
      Object.fromEntries(names.map((n) => [n.toLowerCase(), secret(n)])),
      { authorization: `Bearer ${secret('t')}`, 'x-request-id': 'r1', 'proxy-authorization': 'Basic x', 'grpc-metadata-macaroon': secret('m') },
    ];
    const queries: Array<Record<string, unknown>> = [
      {},
      Object.assign(Object.create(null), Object.fromEntries(names.map((n) => [n, secret(n)]))),
      Object.assign(Object.create(null), { access_token: [secret('a'), secret('b')], page: '2', token: { nested: secret('n') } }),
    ];
    for (const headers of lines2) {
      for (const query of queries) {
        const req = { id: 'r', method: 'GET', url: '/api/x', query, params: {}, headers, remoteAddress: '127.0.0.1', remotePort: 1 };
        log.info({ req, res: { statusCode: 200 }, responseTime: 3 }, 'request completed');
        plain.info({ req: redact(req), res: { statusCode: 200 }, responseTime: 3 }, 'request completed');
        const [a, b] = lines.splice(0).map((l) => ({ ...JSON.parse(l), time: 0 }));
        expect(b).toEqual(a);
        // and the logged object itself was not touched
        expect(req.headers).toBe(headers);
      }
    }
    // A path that would reach a field the fast path does not censor is refused at once, not silently missed.
    expect(() => requestLineRedaction([...REDACT_PATHS, 'req.url'])).toThrow(/req.url/);
    expect(() => requestLineRedaction([...REDACT_PATHS, '*.*.*'])).toThrow();
  });

  it('scrubs a line exactly as the four patterns do, whether or not its one-scan check lets it skip them', () => {
    const fragments = ['Bearer ', 'bEaReR\t', 'bearer', 'key=', 'KEY=v', 'api_key=', 'token=', 'access_token=x&', 'macaroon=', 'preimage=', 'sk_', 'sk_abcdefghijklmnopqrstuvwxyz', 'postgres://u:p@h', 'POSTGRESQL://a:b@', '=', ' ', '"', '&', 'abc', 'é', '\\'];
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.constantFrom(...fragments), fc.string({ maxLength: 4 })), { maxLength: 12 }), (parts) => {
        const text = parts.join('');
        expect(scrubSecrets(text)).toBe(scrubAll(text));
      }),
      { numRuns: 2000 },
    );
  });

  it('logs a failed query without the values bound to it', async () => {
    const database = createDatabase(await freshDatabaseUrl(), { max: 1 });
    try {
      const token = secret('bound');
      const err = await database.db.execute(sql`select ${token}::text where 1 / 0 = 1`).catch((e: unknown) => e);
      expect(String((err as Error).message)).toContain(token); // drizzle puts it in the message...
      const { lines, log } = collect();
      log.error({ err }, 'query failed');
      expect(lines.join('')).not.toContain(token); // ...and the log does not
      expect(lines.join('')).toContain('division by zero');
    } finally {
      await database.close();
    }
  });
});

describe('a real server process', () => {
  const role = `sluice_log_${randomBytes(4).toString('hex')}`;
  const password = secret('dbpass');
  const admin = createDatabase(inject('pgAdminUrl'), { max: 1 });
  afterAll(async () => {
    await admin.pool.query(`drop role if exists ${role}`).catch(() => undefined);
    await admin.close();
  });

  it('writes none of the secrets it was given or handed out, at the most verbose level', async () => {
    await admin.pool.query(`create role ${role} login superuser password '${password}'`);
    const url = new URL(await freshDatabaseUrl());
    url.username = role;
    url.password = password;
    const p = await startServerProcess({ DATABASE_URL: url.toString(), LOG_LEVEL: 'trace' });
    const http = supertest(p.url);
    const secrets: string[] = [password];
    try {
      const created = await http.post('/api/sessions').send({ amount_sats: 500 }).expect(201);
      const token = created.body.sessionToken as string;
      const id = created.body.sessionId as string;
      secrets.push(token);
      await http.post(`/api/dev/stub/pay/${created.body.invoice.paymentHash}`).expect(200);
      const auth = { Authorization: `Bearer ${token}` };
      await http.get(`/api/sessions/${id}`).set(auth).expect(200);
      const r = await http.post(`/api/sessions/${id}/request`).set(auth).send({ request: 'log me [stub:tokens=3] [stub:delay=1]' }).expect(202);
      await readSse(`${p.url}/api/sessions/${id}/requests/${r.body.requestId}/stream?access_token=${encodeURIComponent(token)}`);
      await readSse(`${p.url}/api/runs/${r.body.requestId}/stream`, { headers: { ...auth, 'Last-Event-ID': '1' } });
      await http.get(`/api/runs?access_token=${token}`).expect(401); // not accepted here, but it is in the URL
      const wrong = `sk_${randomBytes(32).toString('base64url')}`;
      const key = secret('provider-key');
      const cookie = secret('cookie');
      const proxy = secret('proxy');
      secrets.push(wrong, key, cookie, proxy);
      await http.get(`/api/sessions/${id}`).set({ Authorization: `Bearer ${wrong}`, 'X-Api-Key': key, Cookie: `s=${cookie}`, 'Proxy-Authorization': `Basic ${proxy}` }).expect(401);
      await http.get('/api/nope').set({ Authorization: `Bearer ${wrong}` }).expect(404);
    } finally {
      p.proc.kill('SIGTERM');
      await p.exited;
    }
    const out = p.output();
    expect(out).toContain('request completed'); // the request log is there, with its headers
    expect(out).toContain('"authorization":"[redacted]"');
    for (const s of secrets) expect(out, `the log must not contain ${s.slice(0, 12)}…`).not.toContain(s);
  });
});
