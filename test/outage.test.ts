import { pino } from 'pino';
import supertest from 'supertest';
import { afterAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createContext } from '../src/context.js';
import { createDatabase } from '../src/db/pool.js';
import { freePort } from './helpers/global-setup.js';
import { testDefaults } from './helpers/context.js';

/**
 * While the database cannot be reached, every endpoint that needs it says so: `503 database_unavailable` with
 * `Retry-After`, in the error envelope — never `500 internal` (issue #9, finding 9).
 */
describe('a database that cannot be reached', async () => {
  // A real connection attempt to a port nobody listens on: refused, as when Postgres is down.
  const deadUrl = `postgres://postgres:postgres@127.0.0.1:${await freePort()}/sluice`;
  const config = loadConfig({}, { ...testDefaults, DATABASE_URL: deadUrl, DB_CONNECT_TIMEOUT_MS: 500 });
  const database = createDatabase(deadUrl, { max: 2, connectTimeoutMs: 500 });
  const ctx = createContext({ config, database, log: pino({ level: 'silent' }) });
  const http = supertest(createApp(ctx));
  afterAll(() => database.close());

  const id = '3f0e9d52-8a43-4b6e-9c0e-2b1b9a6f1c11';
  const auth = { Authorization: 'Bearer sk_not_checked_because_the_database_is_down' };
  const calls: Array<[string, () => supertest.Test]> = [
    ['GET /api/healthz', () => http.get('/api/healthz')],
    ['POST /api/sessions', () => http.post('/api/sessions').send({ amount_sats: 200 })],
    ['GET /api/sessions/:id', () => http.get(`/api/sessions/${id}`).set(auth)],
    ['POST /api/sessions/:id/topup', () => http.post(`/api/sessions/${id}/topup`).set(auth).send({ amount_sats: 200 })],
    ['GET /api/sessions/:id/ledger', () => http.get(`/api/sessions/${id}/ledger`).set(auth)],
    ['POST /api/sessions/:id/request', () => http.post(`/api/sessions/${id}/request`).set(auth).send({ request: 'hello' })],
    ['GET /api/sessions/:id/requests/:rid', () => http.get(`/api/sessions/${id}/requests/${id}`).set(auth)],
    ['GET /api/sessions/:id/requests/:rid/stream', () => http.get(`/api/sessions/${id}/requests/${id}/stream`).set(auth)],
    ['GET /api/runs', () => http.get('/api/runs').set(auth)],
    ['GET /api/runs/:id', () => http.get(`/api/runs/${id}`).set(auth)],
    ['GET /api/runs/:id/stream', () => http.get(`/api/runs/${id}/stream`).set(auth)],
    ['POST /api/runs/:id/stop', () => http.post(`/api/runs/${id}/stop`).set(auth)],
    ['DELETE /api/runs/:id', () => http.delete(`/api/runs/${id}`).set(auth)],
    ['POST /api/jobs', () => http.post('/api/jobs').send({ request: 'hello' })],
    ['GET /api/jobs/:id', () => http.get(`/api/jobs/${id}`)],
    ['POST /api/jobs/:id/refund', () => http.post(`/api/jobs/${id}/refund`).send({ invoice: 'lnbcrt5u1stubabc' })],
    ['GET /api/jobs/:id/stream', () => http.get(`/api/jobs/${id}/stream`)],
    ['POST /api/dev/stub/pay/:hash', () => http.post(`/api/dev/stub/pay/${'a'.repeat(64)}`)],
    ['GET /api/invoices/:hash', () => http.get(`/api/invoices/${'a'.repeat(64)}`)],
  ];
  it.each(calls)('%s answers 503 database_unavailable with Retry-After', async (_name, call) => {
    const res = await call();
    expect(res.status, JSON.stringify(res.body)).toBe(503);
    expect(res.body.error).toMatchObject({ code: 'database_unavailable', message: expect.any(String) });
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
  });

  // The OpenAI face says the same in OpenAI's envelope: a 503 the SDK retries (no `x-should-retry: false`).
  const v1: Array<[string, () => supertest.Test]> = [
    ['GET /v1/models', () => http.get('/v1/models').set(auth)],
    ['POST /v1/responses', () => http.post('/v1/responses').set(auth).send({ model: 'sluice-stub', input: 'hello' })],
    ['GET /v1/responses/:id', () => http.get('/v1/responses/resp_0123456789abcdef0123456789abcdef').set(auth)],
    ['POST /v1/chat/completions', () => http.post('/v1/chat/completions').set(auth).send({ model: 'sluice-stub', messages: [{ role: 'user', content: 'hi' }] })],
    ['POST /v1/conversations', () => http.post('/v1/conversations').set(auth).send({})],
  ];
  it.each(v1)('%s answers 503 database_unavailable in OpenAI\'s envelope, retryable', async (_name, call) => {
    const res = await call();
    expect(res.status, JSON.stringify(res.body)).toBe(503);
    expect(res.body.error).toMatchObject({ type: 'server_error', code: 'database_unavailable', message: expect.any(String) });
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect(res.headers['x-should-retry']).toBeUndefined();
  });
});
