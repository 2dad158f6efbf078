import { beforeAll, describe, expect, it } from 'vitest';
import { useTestServers, type TestServer } from './helpers/context.js';
import { bigTokens } from './helpers/providers.js';
import { paidSession, postRequest, waitFinal, type PaidSession } from './helpers/sessions.js';
import { authed, isError, nothingHeld, range, seqs } from './helpers/ws.js';

/**
 * An adversarial pass over event delivery (SSE and the WebSocket), against the real server and Postgres: every reader
 * gets every event exactly once, in order, then the final one, and gives back everything it held.
 */
const { server } = useTestServers();

describe('a WebSocket final event larger than twice WS_MAX_BUFFERED_BYTES', () => {
  // 64 tokens of 64 KiB: a 4 MiB result, carried whole by the final event; a socket may hold 16 KiB unread.
  const N = 64;
  let x: TestServer;
  let xs: PaidSession;
  let big: string;
  beforeAll(async () => {
    x = await server({ WS_MAX_BUFFERED_BYTES: 16 * 1024, MAX_TOKENS_LIMIT: 4096, SSE_PING_MS: 60_000, SESSION_RATE_LIMIT_PER_MIN: 0 }, { ai: bigTokens(N, 64 * 1024) });
    xs = await paidSession(x, 10_000);
    big = (await postRequest(x, xs, 'long result')).requestId;
    expect((await waitFinal(x, xs, big, 20_000)).state).toBe('complete');
  });

  it('reaches a reader that sends its next messages while it is on its way (it is one message, not a flood)', async () => {
    const c = await authed(x.url, xs.token);
    // Pipelined, as a client subscribing to its runs does: the second is read while the 4 MiB message is in flight.
    c.send({ type: 'subscribe', runId: big, after: N });
    c.send({ type: 'subscribe', session: true });
    c.send({ type: 'stop', runId: big });
    await c.final(big, 20_000);
    await c.wait((m) => m.type === 'subscribed' && m.session === true, { what: 'the session subscribed' });
    expect((await c.wait((m) => m.type === 'stopping', { what: 'the answer to stop' })).state).toBe('complete');
    expect(c.messages.filter(isError())).toEqual([]);
    expect(seqs(c.events(big))).toEqual([N + 1]);
    expect(c.events(big)[0]!.data.result.length).toBeGreaterThan(N * 64 * 1024);
    await c.close();
    await nothingHeld(x);
  });
});
