import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bigTokens } from './helpers/providers.js';
import { startTestServer, useTestServers, type TestServer } from './helpers/context.js';
import { expectNoLeaks, paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { idsOf, readSse, tokensOf } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

/**
 * The fast paths of issue #10 keep every guarantee of the slow ones: a reader moving between the direct write and
 * the queued path gets every event once, in order; a process following a run of another reads Postgres once for all
 * its readers, from the notifications' payloads, and still gets everything when notifications are lost; the first
 * token is in Postgres at once; a long finished run resumes from memory.
 */
const { server, track } = useTestServers();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Count the statements this process sends whose text matches `re`, while `fn` runs. */
async function counting<T>(re: RegExp, fn: () => Promise<T>): Promise<{ result: T; count: number }> {
  const query = pg.Client.prototype.query;
  let count = 0;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as string | { text?: string };
    if (re.test(typeof q === 'string' ? q : (q.text ?? ''))) count++;
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof query;
  try {
    return { result: await fn(), count };
  } finally {
    pg.Client.prototype.query = query;
  }
}

describe('the direct write path', () => {
  it('a reader whose socket fills up and drains again gets every event exactly once, in order', async () => {
    // Big tokens fill the socket's buffers; the reader pauses, then reads on.
    const big = bigTokens(60, 48 * 1024, 2);
    const t = await server({ MAX_TOKENS_LIMIT: 4096, SSE_MAX_QUEUE: 10_000 }, { ai: big });
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'big');
    const u = new URL(t.url);
    const raw = await new Promise<string>((resolve) => {
      let text = '';
      const sock = net.connect(Number(u.port), u.hostname, () => {
        sock.write(`GET /api/sessions/${s.id}/requests/${r.requestId}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.token}\r\nConnection: close\r\n\r\n`);
      });
      sock.setEncoding('latin1');
      let paused = false;
      sock.on('data', (d) => {
        text += d;
        if (paused) return;
        paused = true;
        sock.pause(); // the server's writes back up into the queued path
        setTimeout(() => sock.resume(), 300);
      });
      sock.on('close', () => resolve(text));
    });
    const ids = [...raw.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    expect(ids).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));
    expect(raw).toContain('event: done');
    await waitFinal(t, s, r.requestId);
    await expectNoLeaks(t);
  });

  it('many readers joining while tokens flow get the same whole stream', async () => {
    const t = await server({ SESSION_MAX_STREAMS: 30 });
    const s = await paidSession(t, 10_000);
    const r = await postRequest(t, s, 'crowd [stub:tokens=60] [stub:delay=3]');
    const readers = [];
    for (let i = 0; i < 20; i++) {
      readers.push(readSse(`${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth }));
      await sleep(7);
    }
    const all = await Promise.all(readers);
    for (const got of all) {
      expect(idsOf(got.events)).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));
      expect(got.events).toEqual(all[0]!.events);
    }
    await expectNoLeaks(t);
  });
});

describe('following a run driven by another process', () => {
  let a: TestServer;
  let b: TestServer;
  beforeAll(async () => {
    a = await startTestServer({ SESSION_MAX_STREAMS: 30 });
    // B polls only once a minute: what reaches it in time came through the notifications.
    b = await a.sibling({ SSE_POLL_MS: 60_000 });
  });
  afterAll(async () => {
    await b.close();
    await a.close();
  });

  it('one follower per process: twenty readers on B cost B no more reads of the log than one', async () => {
    const s = await paidSession(a, 10_000);
    /** A run on A read by `n` streams on B: what they got, and how often B read the log meanwhile. */
    const readOnB = async (n: number) => {
      const r = await postRequest(a, s, `followed by ${n} [stub:tokens=40] [stub:delay=8]`);
      const url = `${b.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`;
      return counting(/from run_events/, async () => {
        const readers = Array.from({ length: n }, () => readSse(url, { headers: s.auth }));
        await waitFor(() => b.ctx.registry.stats().followed === 1, { what: 'B to follow the run' });
        return Promise.all(readers);
      });
    };
    const one = await readOnB(1);
    const twenty = await readOnB(20);
    for (const got of [...one.result, ...twenty.result]) {
      expect(idsOf(got.events)).toEqual(Array.from({ length: 41 }, (_, i) => i + 1));
      expect(got.events.at(-1)!.data.result).toBe(tokensOf(got.events).join(''));
    }
    // The tokens came in the notifications' payloads: the log is read when the follower starts and for the final
    // event, however many readers there are.
    expect(one.count).toBeLessThanOrEqual(3);
    expect(twenty.count).toBeLessThanOrEqual(3);
    await expectNoLeaks(b);
  });

  it('writes the first token at once, whatever EVENT_FLUSH_MS', async () => {
    const slow = track(await a.sibling({ EVENT_FLUSH_MS: 5000 }));
    const s = await paidSession(slow, 1000);
    const r = await postRequest(slow, s, 'first [stub:tokens=3] [stub:delay=100]');
    const started = Date.now();
    await waitFor(async () => ((await slow.ctx.store.get(r.requestId))?.lastSeq ?? 0) >= 1, { what: 'the first token in Postgres', timeoutMs: 3000 });
    expect(Date.now() - started).toBeLessThan(2000);
    await waitFinal(slow, s, r.requestId);
  });

  it('still gets every event when the notifications are lost: the follower polls', async () => {
    const deaf = track(await a.sibling({ SSE_POLL_MS: 50 }));
    await deaf.ctx.bridge.stop();
    const s = await paidSession(a, 5000);
    const r = await postRequest(a, s, 'unheard [stub:tokens=30] [stub:delay=5]');
    const got = await readSse(`${deaf.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: s.auth });
    expect(idsOf(got.events)).toEqual(Array.from({ length: 31 }, (_, i) => i + 1));
    expect(got.events.at(-1)).toMatchObject({ event: 'done', data: { state: 'complete' } });
    await expectNoLeaks(deaf);
  });
});

describe('the memory tier', () => {
  it('keeps a 10,000-event run whole, and resumes it from memory without reading the log', async () => {
    const t = await server({ MAX_TOKENS_LIMIT: 10_000, STUB_TOKEN_DELAY_MS: 0, SESSION_MAX_SATS: 100_000 });
    const s = await paidSession(t, 100_000);
    const r = await postRequest(t, s, 'long [stub:tokens=10000] [stub:delay=0]', { max_tokens: 10_000 });
    await waitFinal(t, s, r.requestId, 30_000);
    const kept = await waitFor(() => t.ctx.recent.get(r.requestId)?.events, { what: 'the run in the memory tier' });
    expect(kept).toHaveLength(10_001);
    const { result, count } = await counting(/run_events/, () =>
      readSse(`${t.url}/api/sessions/${s.id}/requests/${r.requestId}/stream`, { headers: { ...s.auth, 'Last-Event-ID': '9900' } }),
    );
    expect(idsOf(result.events)).toEqual(Array.from({ length: 101 }, (_, i) => 9901 + i));
    expect(count).toBe(0);
    await expectNoLeaks(t);
  });
});
