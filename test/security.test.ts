import { createHash } from 'node:crypto';
import express from 'express';
import helmet from 'helmet';
import OpenAI from 'openai';
import request from 'supertest';
import { DEFAULT_CSP, docsCsp, securityHeaders } from '../src/http/security.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { paidSession, postRequest } from './helpers/sessions.js';
import { readSse, tokensOf } from './helpers/sse.js';

const APP = 'https://app.example.com';
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ CORS_ORIGINS: [APP, 'http://localhost:5173'] });
});
afterAll(() => t.close());

describe('CORS', () => {
  it('answers the preflight of a POST with Authorization and Idempotency-Key for an allowed origin', async () => {
    const res = await t.http
      .options('/api/sessions/00000000-0000-4000-8000-000000000000/request')
      .set('Origin', APP)
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization, content-type, idempotency-key')
      .expect(204);
    expect(res.headers['access-control-allow-origin']).toBe(APP);
    expect(res.headers['vary']).toMatch(/Origin/);
    const allowed = res.headers['access-control-allow-headers']!.toLowerCase().split(',');
    expect(allowed).toEqual(expect.arrayContaining(['authorization', 'content-type', 'idempotency-key', 'last-event-id']));
    expect(res.headers['access-control-allow-methods']).toMatch(/POST/);
    expect(res.headers['access-control-allow-methods']).toMatch(/DELETE/);
    expect(res.headers['access-control-max-age']).toBe('600');
    expect(res.headers['access-control-allow-credentials']).toBeUndefined();
  });

  it('lets an allowed origin read the headers a client needs, on answers and on errors', async () => {
    const created = await t.http.post('/api/sessions').set('Origin', APP).send({ amount_sats: 100 }).expect(201);
    expect(created.headers['access-control-allow-origin']).toBe(APP);
    const exposed = created.headers['access-control-expose-headers']!.toLowerCase().split(',');
    expect(exposed).toEqual(
      expect.arrayContaining(['x-request-id', 'location', 'retry-after', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'ratelimit-policy']),
    );
    const denied = await t.http.get(`/api/sessions/${created.body.sessionId}`).set('Origin', APP).expect(401);
    expect(denied.headers['access-control-allow-origin']).toBe(APP);
  });

  it('gives other origins nothing, and adds no CORS header at all when CORS_ORIGINS is empty', async () => {
    const other = await t.http.options('/api/sessions').set('Origin', 'https://evil.example').set('Access-Control-Request-Method', 'POST');
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
    const plain = await t.sibling({ CORS_ORIGINS: [] });
    try {
      const res = await plain.http.options('/api/sessions').set('Origin', APP).set('Access-Control-Request-Method', 'POST');
      expect(res.headers['access-control-allow-origin']).toBeUndefined();
      expect(res.headers['access-control-allow-headers']).toBeUndefined();
    } finally {
      await plain.close();
    }
  });

  it('streams to another origin with ?access_token= (what EventSource does), and lets it resume', async () => {
    const s = await paidSession(t);
    const r = await postRequest(t, s, 'far away [stub:tokens=6] [stub:delay=1]');
    const url = `${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream?access_token=${encodeURIComponent(s.token)}`;
    const res = await fetch(url, { headers: { Origin: APP, Accept: 'text/event-stream' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBe(APP);
    await res.body?.cancel();
    const resumed = await readSse(url, { headers: { Origin: APP, 'Last-Event-ID': '3' } });
    expect(resumed.events[0]!.id).toBe('4');
    expect(tokensOf(resumed.events)).toHaveLength(3);
  });
});

describe('CORS for the openai SDK in a page on another origin', () => {
  /** The names of the headers the unmodified SDK sends, captured on the wire (a browser asks its preflight for them). */
  async function sdkHeaderNames(call: (client: OpenAI) => Promise<unknown>): Promise<string[]> {
    const names = new Set<string>();
    const s = await paidSession(t);
    const client = new OpenAI({
      baseURL: `${t.url}/v1`,
      apiKey: s.token,
      dangerouslyAllowBrowser: true,
      fetch: (url, init) => {
        new Headers(init?.headers).forEach((_v, name) => names.add(name));
        return fetch(url, init);
      },
    });
    await call(client);
    // What a browser leaves out of a preflight: CORS-safelisted request headers.
    return [...names].filter((n) => !['accept', 'accept-language', 'content-language'].includes(n)).sort();
  }

  it('answers the preflight of every header the SDK sends, and lets the page read the ones it acts on', async () => {
    const names = await sdkHeaderNames(async (client) => {
      await client.responses.create({ model: 'sluice-stub', input: 'hi [stub:tokens=2]' });
      await client.responses.stream({ model: 'sluice-stub', input: 'hi [stub:tokens=2]' }).finalResponse();
      await client.chat.completions.create({ model: 'sluice-stub', messages: [{ role: 'user', content: 'hi [stub:tokens=2]' }] }, { headers: { 'Idempotency-Key': 'k-1' } });
    });
    expect(names).toEqual(expect.arrayContaining(['authorization', 'content-type', 'x-stainless-helper-method', 'x-stainless-retry-count']));
    const res = await t.http
      .options('/v1/responses')
      .set('Origin', APP)
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', names.join(','))
      .expect(204);
    expect(res.headers['access-control-allow-origin']).toBe(APP);
    const allowed = res.headers['access-control-allow-headers']!.toLowerCase().split(',');
    expect(allowed).toEqual(expect.arrayContaining(names));
    // The SDK decides whether to retry by x-should-retry, and names errors by x-request-id: readable or ignored.
    const s = await paidSession(t);
    const refused = await t.http.post('/v1/responses').set('Origin', APP).set('authorization', `Bearer ${s.token}`).send({ input: 5 }).expect(400);
    expect(refused.headers['x-should-retry']).toBe('false');
    const exposed = refused.headers['access-control-expose-headers']!.toLowerCase().split(',');
    expect(exposed).toEqual(expect.arrayContaining(['x-should-retry', 'x-request-id', 'retry-after', 'idempotent-replayed']));
  });
});

describe('security headers (helmet)', () => {
  it('sets them on the console page, with a policy that allows only its own scripts', async () => {
    const res = await t.http.get('/').expect(200);
    const csp = res.headers['content-security-policy']!;
    expect(csp).toMatch(/default-src 'self'/);
    expect(csp).toMatch(/script-src 'self'(;|$)/);
    expect(csp).toMatch(/style-src 'self'(;|$)/);
    expect(csp).toMatch(/object-src 'none'/);
    expect(csp).not.toMatch(/upgrade-insecure-requests/);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-frame-options']).toBe('SAMEORIGIN');
    expect(res.headers['referrer-policy']).toBe('no-referrer');
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  it('leaves SSE alone: its headers, its frames', async () => {
    const s = await paidSession(t);
    const r = await postRequest(t, s, 'sse [stub:tokens=4] [stub:delay=1]');
    const res = await fetch(`${t.url}/api/runs/${r.requestId}/stream`, { headers: s.auth });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toBe('no-cache, no-transform');
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const text = await res.text();
    expect(text.match(/^event: token$/gm)).toHaveLength(4);
    expect(text).toMatch(/event: done/);
  });

  it('gives /docs its own policy: its one inline boot script by hash, inline styles, nothing from elsewhere', async () => {
    const docs = await t.http.get('/docs').expect(200).expect('content-type', /^text\/html/);
    const csp = docs.headers['content-security-policy']!;
    const boot = /<script type="text\/javascript">([\s\S]*?)<\/script>/.exec(docs.text)![1]!;
    const hash = createHash('sha256').update(boot).digest('base64');
    expect(csp).toContain(`script-src 'self' 'sha256-${hash}';`);
    expect(csp).toMatch(/style-src 'self' 'unsafe-inline'/);
    expect(csp).toMatch(/default-src 'self'/);
    expect(csp).toMatch(/font-src 'self';/);
    expect(docs.text).toContain('<script src="/docs/scalar.js">');
    expect(docs.text).not.toMatch(/https?:\/\//);
    const api = await t.http.get('/api/healthz');
    expect(api.headers['content-security-policy']).not.toMatch(/unsafe-inline|sha256/);
    const bundle = await t.http.get('/docs/scalar.js').expect(200).expect('content-type', /^text\/javascript/);
    expect(bundle.headers['content-security-policy']).toBe(csp);
  });
});

describe('security headers recorded once', () => {
  it('are exactly what helmet itself sets, in order, on the default policy and on a route of its own', async () => {
    const docs = docsCsp(['sha256-abc']);
    const live = express();
    live.use(securityHeaders([{ prefix: '/docs', directives: docs }]));
    live.use((_req, res) => res.end());
    // helmet as it was used before the recording: its middlewares on every request.
    const direct = express();
    direct.use(helmet({ contentSecurityPolicy: false }));
    direct.use((req, res, next) =>
      helmet.contentSecurityPolicy({ useDefaults: false, directives: (req.path === '/docs' || req.path.startsWith('/docs/') ? { ...DEFAULT_CSP, ...docs } : DEFAULT_CSP) as never })(req, res, next),
    );
    direct.use((_req, res) => res.end());
    for (const path of ['/', '/api/healthz', '/docs', '/docs/scalar.js', '/docsx']) {
      const [a, b] = await Promise.all([request(live).get(path), request(direct).get(path)]);
      const headers = (r: typeof a) => Object.entries(r.headers).filter(([k]) => !['date', 'connection', 'keep-alive'].includes(k));
      expect(headers(a), path).toEqual(headers(b));
      expect(a.headers['x-powered-by']).toBeUndefined();
      expect(a.headers['strict-transport-security']).toMatch(/max-age=/);
    }
  });

  it('refuses at start-up a policy it cannot record (a directive worked out per request)', () => {
    const nonce = () => "'nonce-x'";
    expect(() => securityHeaders([{ prefix: '/x', directives: { 'script-src': [nonce as never] } }])).toThrow(/fixed strings/);
  });
});

describe('the console’s QR codes', () => {
  it('draws a bolt11 as an SVG QR code, and 400s what it cannot draw', async () => {
    const res = await t.http.get('/console/qr.svg').query({ data: 'lnbcrt200u1stubabcdef' }).expect(200);
    expect(res.headers['content-type']).toMatch(/^image\/svg\+xml/);
    expect(res.headers['cache-control']).toMatch(/immutable/);
    expect(res.text ?? res.body.toString()).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    const none = await t.http.get('/console/qr.svg').expect(400);
    expect(none.body.error.code).toBe('invalid_request');
    await t.http.get('/console/qr.svg').query({ data: 'x'.repeat(2001) }).expect(400);
  });
});
