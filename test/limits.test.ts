import { randomUUID } from 'node:crypto';
import { eq, sql } from 'drizzle-orm';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rateLimits, streamSlots } from '../src/db/schema.js';
import { clientKey, tokenKey } from '../src/http/limits.js';
import { createRateLimit } from '../src/limits/rate-limit.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { paidSession, postRequest, type PaidSession } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

/**
 * Every limit is counted in Postgres: two app contexts on one database stand for two processes, and a limit
 * spent half on each still holds.
 */
const LIMITS = {
  SESSION_CREATE_RATE_LIMIT: 3,
  JOB_CREATE_RATE_LIMIT: 2,
  DEMO_RATE_LIMIT: 2,
  SESSION_RATE_LIMIT_PER_MIN: 6,
  SESSION_MAX_STREAMS: 2,
  STREAM_SLOT_TTL_S: 3,
};
let a: TestServer;
let b: TestServer;
beforeAll(async () => {
  a = await startTestServer(LIMITS);
  b = await a.sibling();
});
afterAll(async () => {
  await b.close();
  await a.close();
});

/** Only the stream limit on (this file's IP budget for sessions is spent by the first test). */
const STREAMS_ONLY = { SESSION_CREATE_RATE_LIMIT: 0, SESSION_RATE_LIMIT_PER_MIN: 0 };

/**
 * Two more processes on the database, a paid session and a long run of it; afterwards the run is stopped and
 * every slot must have been given back (none left in the table, none held by either process).
 */
async function streamPair(request: string, fn: (p: { one: TestServer; two: TestServer; s: PaidSession; runId: string }) => Promise<void>) {
  const one = await a.sibling(STREAMS_ONLY);
  const two = await one.sibling(STREAMS_ONLY);
  try {
    const s = await paidSession(one, 5000);
    const { requestId } = await postRequest(one, s, request);
    await fn({ one, two, s, runId: requestId });
    await one.http.post(`/api/runs/${requestId}/stop`).set(s.auth);
    await waitFor(async () => (await one.ctx.db.select().from(streamSlots)).length === 0, { what: 'no stream slots' });
    expect(one.ctx.limits.streamSlotsHeld + two.ctx.limits.streamSlotsHeld).toBe(0);
  } finally {
    await two.close();
    await one.close();
  }
}

/** A 429 in the /api envelope, naming its limit, with Retry-After. */
function expectLimited(res: { status: number; body: any; headers: Record<string, string> }, limit: string) {
  expect(res.status).toBe(429);
  expect(res.body.error).toMatchObject({ code: 'rate_limited', details: { limit, retryAfterSeconds: expect.any(Number) } });
  expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  expect(Number(res.headers['retry-after'])).toBe(res.body.error.details.retryAfterSeconds);
}

describe('limits shared by every process', () => {
  it('sessions created per IP: three across two processes, then 429 on both', async () => {
    const first = await a.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
    expect(first.headers['ratelimit-limit']).toBe('3');
    expect(first.headers['ratelimit-remaining']).toBe('2');
    expect(first.headers['ratelimit-policy']).toBe('3;w=3600');
    await b.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
    const third = await a.http.post('/api/sessions').send({ amount_sats: 100 }).expect(201);
    expect(third.headers['ratelimit-remaining']).toBe('0');
    const limited = await b.http.post('/api/sessions').send({ amount_sats: 100 });
    expectLimited(limited, 'session_create');
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(3500);
    expectLimited(await a.http.post('/api/sessions').send({ amount_sats: 100 }), 'session_create');
  });

  it('jobs created per IP (POST /api/jobs has no auth, so this is its only guard)', async () => {
    await a.http.post('/api/jobs').send({ request: 'one' }).expect(201);
    await b.http.post('/api/jobs').send({ request: 'two' }).expect(201);
    expectLimited(await a.http.post('/api/jobs').send({ request: 'three' }), 'job_create');
  });

  it('the demo per IP, across processes; a 400 costs nothing', async () => {
    await a.http.get('/api/demo').expect(400);
    await a.http.get('/api/demo').query({ request: 'x [stub:tokens=1] [stub:delay=0]' }).expect(200);
    await b.http.get('/api/demo').query({ request: 'y [stub:tokens=1] [stub:delay=0]' }).expect(200);
    expectLimited(await a.http.get('/api/demo').query({ request: 'z' }), 'demo');
  });

  it('requests per session per minute, whichever process answers, and only for that session', async () => {
    // Made in a context without limits on creation (this file's IP budget is spent above).
    const free = await a.sibling({ SESSION_CREATE_RATE_LIMIT: 0 });
    try {
      const s = await paidSession(free);
      const other = await paidSession(free);
      const remaining: string[] = [];
      for (let i = 0; i < 6; i++) {
        const res = await (i % 2 ? b : a).http.get(`/api/sessions/${s.id}`).set(s.auth).expect(200);
        remaining.push(res.headers['ratelimit-remaining']!);
      }
      // One budget, counted down alternately by both processes.
      expect(remaining).toEqual(['5', '4', '3', '2', '1', '0']);
      expectLimited(await b.http.get(`/api/sessions/${s.id}`).set(s.auth), 'session_requests');
      // Streams count with their ?access_token=, and the other session is untouched.
      expectLimited(await a.http.get(`/api/runs`).query({ access_token: s.token }), 'session_requests');
      await a.http.get(`/api/sessions/${other.id}`).set(other.auth).expect(200);
    } finally {
      await free.close();
    }
  });

  it('a request for work is counted by its accept statement: its 202 carries the budget, and past it a 429 debits nothing', async () => {
    const free = await a.sibling({ SESSION_CREATE_RATE_LIMIT: 0 });
    try {
      const s = await paidSession(free);
      const remaining: string[] = [];
      const runIds: string[] = [];
      for (let i = 0; i < 6; i++) {
        // Both processes, and runs that start at once (a free slot): the provider is asked before the answer is made.
        const res = await (i % 2 ? b : free).http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: `count me ${i} [stub:tokens=1] [stub:delay=0]` });
        expect(res.status, JSON.stringify(res.body)).toBe(202);
        expect(res.headers['ratelimit-limit']).toBe('6');
        remaining.push(res.headers['ratelimit-remaining']!);
        runIds.push(res.body.requestId);
      }
      expect(remaining).toEqual(['5', '4', '3', '2', '1', '0']);
      const limited = await free.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: 'one too many [stub:tokens=1] [stub:delay=0]' });
      expectLimited(limited, 'session_requests');
      expect(limited.headers['ratelimit-remaining']).toBe('0');
      // Six debits, six runs, all finished; the seventh request took nothing.
      const pool = free.ctx.database.pool;
      const counts = async () =>
        (
          await pool.query(
            `select (select count(*) from ledger_entries where session_id = $1 and kind = 'debit')::int as debits,
                    (select count(*) from runs where session_id = $1)::int as runs,
                    (select count(*) from runs where session_id = $1 and state = 'complete')::int as complete`,
            [s.id],
          )
        ).rows[0];
      await waitFor(async () => (await counts()).complete === 6 || null, { what: 'the six runs to complete' });
      expect(await counts()).toEqual({ debits: 6, runs: 6, complete: 6 });
    } finally {
      await free.close();
    }
  });

  it('open streams per session: a slot per stream in any process, given back on close', () =>
    streamPair('hold the line [stub:tokens=400] [stub:delay=25]', async ({ one, two, s, runId }) => {
      const url = (t: TestServer) => `${t.url}/api/sessions/${s.id}/requests/${runId}/stream?access_token=${s.token}`;
      const first = new AbortController();
      const second = new AbortController();
      let got1 = 0;
      let got2 = 0;
      const r1 = readSse(url(one), { signal: first.signal, onEvent: () => got1++ });
      const r2 = readSse(`${two.url}/api/runs/${runId}/stream`, { headers: s.auth, signal: second.signal, onEvent: () => got2++ });
      await waitFor(() => got1 > 0 && got2 > 0, { what: 'two live streams' });
      const third = await fetch(url(one));
      expect(third.status).toBe(429);
      const body = await third.json();
      expect(body.error).toMatchObject({ code: 'rate_limited', details: { limit: 'streams' } });
      expect(Number(third.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await fetch(url(two))).status).toBe(429);

      // Closing one gives its slot back (asynchronously: poll with a deadline).
      second.abort();
      await r2.catch(() => undefined);
      const again = new AbortController();
      const opened = await waitFor(async () => {
        const res = await fetch(url(two), { signal: again.signal });
        if (res.status === 200) return res;
        await res.body?.cancel();
        return null;
      }, { what: 'a slot to come free' });
      expect(opened.headers.get('content-type')).toMatch(/^text\/event-stream/);
      again.abort();
      first.abort();
      await r1.catch(() => undefined);
    }));

  it('gives exactly SESSION_MAX_STREAMS of many simultaneous opens a slot, across processes', () =>
    streamPair('crowd [stub:tokens=400] [stub:delay=25]', async ({ one, two, s, runId }) => {
      const controller = new AbortController();
      const opens = await Promise.all(
        Array.from({ length: 10 }, (_, i) => fetch(`${(i % 2 ? two : one).url}/api/runs/${runId}/stream?access_token=${s.token}`, { signal: controller.signal })),
      );
      expect(opens.map((res) => res.status).sort()).toEqual([200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);
      controller.abort();
    }));

  it('renews the slots it holds, and heals from a dead process’s slots after their TTL', async () => {
    const free = await a.sibling(STREAMS_ONLY);
    try {
      const s = await paidSession(free, 5000);
      const key = `session:${tokenKey(s.token)}`;
      // A process that died holding both slots: rows nobody renews, lapsing in a second.
      await free.ctx.db.insert(streamSlots).values([
        { id: randomUUID(), key, expiresAt: sql`now() + interval '1 second'` },
        { id: randomUUID(), key, expiresAt: sql`now() + interval '1 second'` },
      ]);
      const r = await postRequest(free, s, 'heal [stub:tokens=400] [stub:delay=25]');
      const url = `${free.url}/api/runs/${r.requestId}/stream?access_token=${s.token}`;
      const blocked = await fetch(url);
      expect(blocked.status).toBe(429);
      await blocked.body?.cancel();
      const controller = new AbortController();
      const opened = await waitFor(async () => {
        const res = await fetch(url, { signal: controller.signal });
        if (res.status === 200) return res;
        await res.body?.cancel();
        return null;
      }, { what: 'the dead slots to lapse', timeoutMs: 5000 });
      expect(opened.status).toBe(200);
      // Ours is renewed every TTL/3 (1 s) while the stream is open.
      const [mine] = await free.ctx.db.select().from(streamSlots).where(sql`${streamSlots.expiresAt} > now() + interval '2 seconds'`);
      expect(mine).toBeDefined();
      const renewed = await waitFor(async () => {
        const [row] = await free.ctx.db.select().from(streamSlots).where(eq(streamSlots.id, mine!.id));
        return row && row.expiresAt.getTime() > mine!.expiresAt.getTime() ? row : null;
      }, { what: 'the slot to be renewed', timeoutMs: 3000 });
      expect(renewed.key).toBe(key);
      // The sweeper deletes lapsed slots (the dead ones), never a live one.
      await free.ctx.limits.sweep();
      const left = await free.ctx.db.select().from(streamSlots);
      expect(left.map((x) => x.id)).toEqual([mine!.id]);
      controller.abort();
      await free.http.post(`/api/runs/${r.requestId}/stop`).set(s.auth);
      await waitFor(async () => (await free.ctx.db.select().from(streamSlots)).length === 0, { what: 'the slot to be given back' });
    } finally {
      await free.close();
    }
  });

  it('sweeps ended windows from the counter table', async () => {
    await a.ctx.db.insert(rateLimits).values({ key: 'demo:203.0.113.9', points: 5, expire: Date.now() - 1000 });
    await a.ctx.limits.sweep();
    const rows = await a.ctx.db.select().from(rateLimits).where(eq(rateLimits.key, 'demo:203.0.113.9'));
    expect(rows).toEqual([]);
    // Live windows stay.
    expect((await a.ctx.db.select().from(rateLimits)).length).toBeGreaterThan(0);
  });

  it('counts the 429s in the metrics, by limit', async () => {
    const text = (await a.http.get('/metrics').expect(200)).text;
    expect(text).toMatch(/^sluice_rate_limited_total\{limit="session_create"\} [1-9]/m);
    expect(text).toMatch(/^sluice_rate_limited_total\{limit="demo"\} [1-9]/m);
  });
});

describe('limit pieces', () => {
  it('never hands out more slots than the limit, however many takers race in two processes', async () => {
    const { createStreamSlots } = await import('../src/limits/stream-slots.js');
    const one = createStreamSlots({ pool: a.ctx.database.pool, log: a.ctx.log, ttlS: 30 });
    const two = createStreamSlots({ pool: b.ctx.database.pool, log: b.ctx.log, ttlS: 30 });
    for (let round = 0; round < 5; round++) {
      const key = `race:${round}`;
      const got = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 ? one : two).acquire(key, 3)));
      const held = got.filter((g): g is () => void => g !== null);
      expect(held).toHaveLength(3);
      held.forEach((release) => release());
    }
    await waitFor(async () => (await a.ctx.db.select().from(streamSlots).where(sql`${streamSlots.key} like 'race:%'`)).length === 0, { what: 'race slots given back' });
  });

  it('still limits, per process, while Postgres cannot be reached', async () => {
    const dead = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/none', connectionTimeoutMillis: 500 });
    dead.on('error', () => {});
    try {
      const limit = createRateLimit({ pool: dead, name: 'offline', points: 2, windowS: 60 });
      expect((await limit.hit('k')).ok).toBe(true);
      expect((await limit.hit('k')).ok).toBe(true);
      const third = await limit.hit('k');
      expect(third).toMatchObject({ ok: false, remaining: 0 });
      expect(third.resetMs).toBeGreaterThan(0);
    } finally {
      await dead.end();
    }
  });

  it('keys IPv4 clients by address and IPv6 clients by their /64', () => {
    expect(clientKey('203.0.113.7')).toBe('203.0.113.7');
    expect(clientKey('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:0db8:0001:0002:ffff:0:0:9')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey(undefined)).toBe('unknown');
  });
});
