import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectNoLeaks, paidSession, postRequest, type PaidSession } from './helpers/sessions.js';
import { idsOf, readSse } from './helpers/sse.js';
import { authed, range, seqs, WsClient } from './helpers/ws.js';

let t: TestServer;
let s: PaidSession;
beforeAll(async () => {
  t = await startTestServer();
  s = await paidSession(t, 5000);
});
afterAll(() => t.close());

describe('smoke', () => {
  it('subscribes to a run', async () => {
    const c = await authed(t.url, s.token);
    const r = await postRequest(t, s, 'hello [stub:tokens=10] [stub:delay=5]');
    c.send({ type: 'subscribe', runId: r.requestId });
    const fin = await c.final(r.requestId);
    expect(fin.event).toBe('done');
    expect(seqs(c.events(r.requestId))).toEqual(range(1, 11));
    const sse = await readSse(`${t.url}/api/runs/${r.requestId}/stream`, { headers: s.auth });
    expect(idsOf(sse.events)).toEqual(range(1, 11));
    await c.close();
    await expectNoLeaks(t);
  });
});
