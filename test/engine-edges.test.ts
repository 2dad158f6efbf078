import net from 'node:net';
import { sql } from 'drizzle-orm';
import { describe, expect, it } from 'vitest';
import type { AiProvider } from '../src/providers/ai/types.js';
import { runFeed } from '../src/runs/feed.js';
import { createRegistry, type RunEvent } from '../src/runs/registry.js';
import type { RunRow, RunStore } from '../src/runs/store.js';
import { useTestServers } from './helpers/context.js';
import { expectLedgerBalanced, expectNoLeaks, getRequest, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { idsOf, readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';
import { bigTokens } from './helpers/providers.js';

/**
 * The edges of the engine: slow and vanishing readers, a run finished by another process, Postgres refusing a
 * run's end, very long logs, stops racing the queue. Each test here once failed against an earlier engine.
 */
const { server, track } = useTestServers();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('readers', () => {
  it('a slow reader gets a gapless prefix, then done or a resync naming the last id it got', async () => {
    const t = await server({ EVENT_FLUSH_MS: 2000 });
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'flood [stub:tokens=120] [stub:delay=2]');
    const seqs: number[] = [];
    let resync: number | undefined;
    const feed = runFeed({ registry: t.ctx.registry, store: t.ctx.store, runId: r.requestId, after: 0, signal: new AbortController().signal, maxQueue: 16, pollMs: 50 });
    for await (const item of feed) {
      if (item.kind === 'resync') resync = item.lastEventId;
      else seqs.push(item.event.seq);
      await sleep(6);
    }
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    if (resync !== undefined) expect(resync).toBe(seqs.at(-1));
    else expect(seqs).toHaveLength(121);
    await waitFinal(t, s, r.requestId);
    await expectNoLeaks(t);
  });

  it('a client gone before the stream opened leaves no subscriber behind', async () => {
    const t = await server();
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'long [stub:tokens=40] [stub:delay=10]');
    const u = new URL(t.url);
    for (let i = 0; i < 10; i++) {
      await new Promise<void>((resolve) => {
        const sock = net.connect(Number(u.port), u.hostname, () => {
          sock.write(`GET /api/sessions/${s.id}/requests/${r.requestId}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.token}\r\n\r\n`);
          setTimeout(() => {
            sock.destroy();
            resolve();
          }, 1);
        });
      });
    }
    await waitFinal(t, s, r.requestId);
    await expectNoLeaks(t);
  });

  it('a client that stops reading is disconnected after the write timeout, freeing the run', async () => {
    // Big tokens fill the socket buffers quickly.
    const big = bigTokens(200, 64 * 1024);
    const t = await server({ SSE_WRITE_TIMEOUT_MS: 300, MAX_TOKENS_LIMIT: 4096 }, { ai: big });
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'big');
    const u = new URL(t.url);
    const sock = net.connect(Number(u.port), u.hostname, () => {
      sock.write(`GET /api/sessions/${s.id}/requests/${r.requestId}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.token}\r\n\r\n`);
      sock.pause(); // and never read
    });
    const closed = new Promise((resolve) => sock.on('close', resolve));
    expect((await waitFinal(t, s, r.requestId, 20_000)).state).toBe('complete');
    await expectNoLeaks(t);
    sock.resume();
    await closed;
  });

  it('replays a log longer than any one page from cursor 0 without a gap', async () => {
    const registry = createRegistry({ bufferSize: 16 });
    const runId = 'r1';
    registry.open({ id: runId, kind: 'session', sessionId: null, jobId: null, state: 'executing', lastSeq: 0 } as RunRow);
    const persisted: RunEvent[] = [];
    for (let i = 0; i < 10_100; i++) persisted.push(registry.append(runId, 'token', { content: 'x' }));
    registry.markPersisted(runId, 10_100);
    const store = { eventsAfter: async (_id: string, after: number, limit = 10_000) => persisted.filter((e) => e.seq > after).slice(0, limit) } as unknown as RunStore;
    const seqs: number[] = [];
    const feed = runFeed({ registry, store, runId, after: 0, signal: new AbortController().signal, maxQueue: 100, pollMs: 50 });
    setTimeout(() => {
      registry.append(runId, 'done', {});
      registry.end(runId);
    }, 50);
    for await (const item of feed) if (item.kind === 'event') seqs.push(item.event.seq);
    expect(seqs).toEqual(Array.from({ length: 10_101 }, (_, i) => i + 1));
  });
});

describe('another process finishes a run this one streams', () => {
  it('readers still get the final event, the entry is freed, and a reconnect past the log gets the outcome', async () => {
    const t = await server({ EVENT_FLUSH_MS: 500 });
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'long [stub:tokens=400] [stub:delay=5]');
    const seen: string[] = [];
    const reading = readSse(`${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth, onEvent: (e) => seen.push(`${e.id}:${e.event}`) });
    await waitFor(() => seen.length >= 20, { what: '20 events' });
    const other = await t.sibling();
    track(other);
    expect(await other.ctx.executor.interruptOrphan(r.requestId)).toBe(true);
    const { events } = await reading;
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { state: 'interrupted' } });
    await expectNoLeaks(t);
    // A client that saw more tokens than Postgres kept still learns the outcome when it reconnects.
    const lastToken = Math.max(...idsOf(events.filter((e) => e.event === 'token')));
    const row = (await t.ctx.store.get(r.requestId))!;
    if (lastToken > row.lastSeq) {
      const again = await readSse(`${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: { ...s.auth, 'Last-Event-ID': String(lastToken) } });
      expect(again.status).toBe(200);
      expect(again.events.at(-1)).toMatchObject({ event: 'done', data: { state: 'interrupted' } });
    }
    await expectLedgerBalanced(t, s);
  });
});

describe('Postgres refuses to record the end of a run', () => {
  it('readers are told nothing invented: they follow Postgres until a later sweep records the run interrupted and refunded', async () => {
    const t = await server();
    await t.ctx.db.execute(sql`
      create or replace function refuse_end() returns trigger language plpgsql as $$
      begin
        if new.request like '%[refuse-end]%' and new.state <> 'executing' and new.state <> 'queued' then
          raise exception 'refusing to record the end';
        end if;
        return new;
      end $$`);
    await t.ctx.db.execute(sql`create trigger refuse_end before update on runs for each row execute function refuse_end()`);
    const s = await paidSession(t, 1000);
    const r = await postRequest(t, s, 'doomed [refuse-end] [stub:tokens=3] [stub:delay=1]');
    const seen: string[] = [];
    const reading = readSse(`${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth, onEvent: (e) => seen.push(e.event) });
    await waitFor(() => t.ctx.executor.abandoned().includes(r.requestId), { timeoutMs: 15_000, what: 'the run given up to recovery' });
    // Not held any more (its lease is not renewed), still live in Postgres, and the reader has no made-up end.
    expect(t.ctx.executor.held()).not.toContain(r.requestId);
    expect((await getRequest(t, s, r.requestId)).state).toBe('executing');
    expect(seen.filter((e) => e === 'done' || e === 'error')).toEqual([]);
    await t.ctx.db.execute(sql`drop trigger refuse_end on runs`);
    await t.ctx.maintenance.sweep();
    const { events } = await reading;
    const row = await getRequest(t, s, r.requestId);
    expect(row).toMatchObject({ state: 'interrupted', refundedSats: r.debitedSats });
    // What the reader is told is what the database records.
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { state: 'interrupted', refundedSats: r.debitedSats, result: row.result } });
    expect(t.ctx.executor.abandoned()).toEqual([]);
    expect((await expectLedgerBalanced(t, s)).balanceSats).toBe(1000);
    await expectNoLeaks(t);
  });
});

describe('input Postgres cannot store', () => {
  it('a NUL in the request is a 400; a NUL from the provider is dropped', async () => {
    const nul: AiProvider = {
      name: 'nul',
      async *stream() {
        yield { type: 'token', content: 'a' };
        yield { type: 'token', content: 'b\u0000' };
      },
      async evaluate() {
        return { accept: false, reason: 'n/a' };
      },
    };
    const t = await server({}, { ai: nul });
    const s = await paidSession(t, 1000);
    const res = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('content-type', 'application/json').send('{"request":"hi\\u0000there"}');
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_request');
    // A lone surrogate is valid JSON but not storable text either.
    const lone = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).set('content-type', 'application/json').send('{"request":"hi\\ud800there"}');
    expect(lone.status).toBe(400);
    await t.http.post('/api/jobs').set('content-type', 'application/json').send('{"request":"x\\u0000"}').expect(400);
    const r = await postRequest(t, s, 'x');
    expect(await waitFinal(t, s, r.requestId)).toMatchObject({ state: 'complete', result: 'ab' });
  });
});

describe('the queue', () => {
  it('stopping queued runs while every slot is busy never strands the next one', async () => {
    const t = await server({ MAX_CONCURRENT_RUNS: 2 });
    const s = await paidSession(t, 10_000);
    const a = await postRequest(t, s, 'a [stub:tokens=10] [stub:delay=20]');
    const b = await postRequest(t, s, 'b [stub:tokens=10] [stub:delay=20]');
    const c = await postRequest(t, s, 'c [stub:tokens=3] [stub:delay=1]');
    const d = await postRequest(t, s, 'd [stub:tokens=3] [stub:delay=1]');
    const e = await postRequest(t, s, 'e [stub:tokens=3] [stub:delay=1]');
    // Hold C's and D's rows so their stop is still finishing when A and B end (and the claims skip them).
    const client = await t.ctx.database.pool.connect();
    await client.query('begin');
    await client.query('select 1 from runs where id = any($1) for update', [[c.requestId, d.requestId]]);
    const stops = [t.ctx.executor.cancel(c.requestId), t.ctx.executor.cancel(d.requestId)];
    await waitFinal(t, s, a.requestId);
    await waitFinal(t, s, b.requestId);
    await client.query('commit');
    client.release();
    expect(await Promise.all(stops)).toEqual([true, true]);
    expect((await waitFinal(t, s, c.requestId)).state).toBe('cancelled');
    expect((await waitFinal(t, s, e.requestId)).state).toBe('complete');
    await expectNoLeaks(t);
  });
});
