import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/logger.js';
import { startTestServer } from './helpers/context.js';
import { paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/** A logger writing into memory, and the lines it wrote. */
function capture(format: 'json' | 'pretty') {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d) => (text += d));
  return { log: createLogger({ LOG_LEVEL: 'info', LOG_FORMAT: format }, { destination: out }), lines: () => text.split('\n').filter(Boolean) };
}

describe('logs', () => {
  it('writes one JSON line when a run starts and one when it finishes, with who, what, how much and how long', async () => {
    const { log, lines } = capture('json');
    const t = await startTestServer({}, { log });
    try {
      const s = await paidSession(t);
      const r = await postRequest(t, s, 'log me [stub:tokens=5] [stub:delay=2]');
      const done = await waitFinal(t, s, r.requestId);
      const records = await waitFor(() => {
        const all = lines().map((l) => JSON.parse(l));
        return all.some((l) => l.msg === 'run finished') ? all : null;
      });
      const started = records.filter((l) => l.msg === 'run started');
      const finished = records.filter((l) => l.msg === 'run finished');
      expect(started).toHaveLength(1);
      expect(finished).toHaveLength(1);
      expect(started[0]).toMatchObject({ level: 30, runId: r.requestId, kind: 'session', sessionId: s.id, model: 'sluice-stub', maxTokens: 256, debitedSats: r.debitedSats });
      expect(started[0].queuedMs).toBeGreaterThanOrEqual(0);
      expect(finished[0]).toMatchObject({
        runId: r.requestId,
        kind: 'session',
        sessionId: s.id,
        model: 'sluice-stub',
        state: 'complete',
        outputTokens: 5,
        inputTokens: done.usage.inputTokens,
        debitedSats: r.debitedSats,
        chargedSats: done.chargedSats,
        refundedSats: done.refundedSats,
      });
      expect(finished[0].durationMs).toBeGreaterThanOrEqual(8);
      // Request lines stay short: the status, not every (security) header of the response.
      const request = records.find((l) => l.msg === 'request completed' && l.res?.statusCode === 202);
      expect(request.res).toEqual({ statusCode: 202 });
    } finally {
      await t.close();
    }
  });

  it('renders pretty logs as one readable line per record, an error with its stack below', () => {
    const { log, lines } = capture('pretty');
    log.info({ runId: 'a1b2c3d4-0000', kind: 'session', sessionId: 'feedbeef-1111', state: 'complete', inputTokens: 8, outputTokens: 40, debitedSats: 11, chargedSats: 2, refundedSats: 9, durationMs: 812 }, 'run finished');
    log.info({ req: { id: '5e6f7a8b-22', method: 'GET', url: '/api/runs?access_token=[redacted]' }, res: { statusCode: 200 }, responseTime: 3 }, 'request completed');
    log.warn({ err: new Error('boom'), runId: 'x' }, 'run failed');
    const out = lines();
    expect(out[0]).toMatch(/INFO.*■ run a1b2c3d4 session feedbeef complete · 8\+40 tokens · charged 2 of 11 sats, 9 back · 812 ms$/);
    expect(out[1]).toMatch(/INFO.*GET \/api\/runs\?access_token=\[redacted\] 200 3 ms · req 5e6f7a8b$/);
    expect(out[2]).toMatch(/WARN.*run failed runId=x$/);
    expect(out[3]).toMatch(/^\s+Error: boom$/);
    expect(out[4]).toMatch(/^\s+at /);
    // Nothing else: no JSON objects trailing the lines.
    expect(out.slice(0, 3).join('\n')).not.toMatch(/[{}]/);
  });
});
