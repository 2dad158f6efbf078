import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { loadCatalogue, parseCatalogue } from '../src/models/catalogue.js';
import { runIdOfResponse } from '../src/openai/ids.js';
import { logCursorFor, preludeEvents, responseEventsOf } from '../src/openai/stream-map.js';
import type { RunEvent } from '../src/runs/registry.js';
import type { RunRow } from '../src/runs/store.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { expectNoLeaks, paidSession } from './helpers/sessions.js';
import { waitFor } from './helpers/wait.js';

/** The face's pure parts (stream numbering, the catalogue) and the face across two processes on one database. */

const row = { id: '11111111-2222-4333-8444-555555555555', createdAt: new Date(0), model: 'm', maxTokens: 9, debitedSats: 5, faceData: { background: false } } as unknown as RunRow;
const token = (seq: number): RunEvent => ({ seq, type: 'token', data: { content: ` t${seq}` } });
const done = (seq: number): RunEvent => ({ seq, type: 'done', data: { state: 'complete', result: 'r', debitedSats: 5, chargedSats: 1, refundedSats: 4, usage: { inputTokens: 1, outputTokens: 3 }, stopReason: 'stop', completedAt: null } });
const streamOf = (log: RunEvent[], after = -1) =>
  [...preludeEvents(row), ...log.filter((e) => e.seq > logCursorFor(after)).flatMap((e) => responseEventsOf(row, e))].filter((e) => e.sequence_number > after);

describe('the Responses stream is a pure function of the log', () => {
  // Seqs with gaps: tokens another process streamed but never persisted, and a final event numbered above them.
  const log = [token(1), token(2), token(5), token(6), done(11)];

  it('numbers every event uniquely and in order, gaps or not', () => {
    const all = streamOf(log);
    const numbers = all.map((e) => e.sequence_number);
    expect(numbers).toEqual([0, 1, 2, 3, 4, 5, 8, 9, 14, 15, 16, 17]);
    expect(all.map((e) => e.type).slice(-4)).toEqual(['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed']);
  });

  it('resuming after any N gives exactly the events after N', () => {
    const all = streamOf(log);
    for (let n = -1; n <= 20; n++) expect(streamOf(log, n)).toEqual(all.filter((e) => e.sequence_number > n));
  });

  it('a terminal event describes the whole response: cancelled ends incomplete with status cancelled', () => {
    const cancelled: RunEvent = { seq: 3, type: 'done', data: { ...(done(3).data as object), state: 'cancelled', stopReason: null } };
    const last = responseEventsOf(row, cancelled).at(-1)!;
    expect(last).toMatchObject({ type: 'response.incomplete', sequence_number: 9, response: { status: 'cancelled', incomplete_details: null } });
    const failed: RunEvent = { seq: 2, type: 'error', data: { state: 'failed', code: 'provider_error', message: 'boom' } };
    expect(responseEventsOf(row, failed).at(-1)).toMatchObject({ type: 'response.failed', response: { status: 'failed', error: { code: 'server_error', message: 'boom' } } });
  });
});

describe('the catalogue names every mistake', () => {
  it('collects schema and cross-field mistakes together', () => {
    const bad = { default: 'x', models: [{ name: 'a', provider: 'nope', inputSatsPer1k: 1, outputSatsPer1k: 1, maxOutputTokens: 10, contextTokens: 10 }, { name: 'a' }] };
    const err = (() => {
      try {
        parseCatalogue(JSON.stringify(bad), 'MODELS', ['stub']);
      } catch (e) {
        return e as ConfigError;
      }
    })()!;
    expect(err).toBeInstanceOf(ConfigError);
    const text = err.problems.join('\n');
    for (const part of ['MODELS.models[0].provider', 'MODELS.models[0].maxOutputTokens', 'MODELS.models[1].name: "a" is listed twice', 'MODELS.models[1].inputSatsPer1k', 'MODELS.default']) {
      expect(text).toContain(part);
    }
    expect(() => parseCatalogue('{', 'MODELS', ['stub'])).toThrow(/MODELS: not valid JSON/);
  });

  it('takes only an http(s) baseURL: a scheme-less host (localhost:11434/v1) is named at start-up, not failed on every request', () => {
    const entry = (baseURL: string) => ({ name: 'm', provider: 'stub', baseURL, inputSatsPer1k: 1, outputSatsPer1k: 1, maxOutputTokens: 10, contextTokens: 100 });
    for (const baseURL of ['localhost:11434/v1', 'ftp://gpu-box/v1', 'file:///etc/passwd', 'javascript:alert(1)']) {
      expect(() => parseCatalogue(JSON.stringify({ default: 'm', models: [entry(baseURL)] }), 'MODELS', ['stub']), baseURL).toThrow(/MODELS\.models\[0\]\.baseURL: baseURL must be an http\(s\) URL/);
    }
    for (const baseURL of ['http://localhost:11434/v1', 'https://api.openai.com/v1', 'HTTPS://gpu-box:8000/v1']) {
      expect(parseCatalogue(JSON.stringify({ default: 'm', models: [entry(baseURL)] }), 'MODELS', ['stub']).default.baseURL).toBe(baseURL);
    }
  });

  it('reads MODELS_FILE, refuses both variables, and defaults to the stub priced by PRICE_*', () => {
    const config = loadConfig({}, { MODELS_FILE: '/nowhere/models.json' });
    expect(() => loadCatalogue(config, ['stub'])).toThrow(/MODELS_FILE: cannot read \/nowhere\/models.json/);
    expect(() => loadCatalogue(loadConfig({}, { MODELS_FILE: 'f', MODELS: '{}' }), ['stub'])).toThrow(/set one of them, not both/);
    const file = JSON.stringify({ default: 'f', models: [{ name: 'f', provider: 'stub', inputSatsPer1k: 0, outputSatsPer1k: 0, maxOutputTokens: 8, contextTokens: 64 }] });
    expect(loadCatalogue(config, ['stub'], () => file).default).toMatchObject({ name: 'f', upstreamModel: 'f' });
    const stub = loadCatalogue(loadConfig({}, { PRICE_INPUT_SATS_PER_1K: 3, PRICE_OUTPUT_SATS_PER_1K: 7 }), ['stub']);
    expect(stub.models).toEqual([expect.objectContaining({ name: 'sluice-stub', provider: 'stub', inputSatsPer1k: 3, outputSatsPer1k: 7 })]);
  });
});

describe('retention', () => {
  it('an Idempotency-Key is forgotten after IDEMPOTENCY_TTL_HOURS: swept, and the same key then starts new work', async () => {
    const t = await startTestServer({ IDEMPOTENCY_TTL_HOURS: 0.0002 }); // 0.72 s
    try {
      const s = await paidSession(t, 5000);
      const client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: s.token });
      const body = { model: 'sluice-stub', input: 'kept a while [stub:tokens=1]' };
      const opts = { headers: { 'Idempotency-Key': 'short-lived' } };
      const first = await client.responses.create(body, opts);
      expect((await client.responses.create(body, opts)).id).toBe(first.id);
      const keys = () => t.ctx.database.pool.query('select count(*)::int as n from idempotency_keys').then((r) => r.rows[0].n as number);
      expect(await keys()).toBe(1);
      await waitFor(async () => {
        await t.ctx.maintenance.sweep();
        return (await keys()) === 0;
      }, { timeoutMs: 10_000, intervalMs: 200, what: 'the expired key to be swept' });
      const later = await client.responses.create(body, opts);
      expect(later.id).not.toBe(first.id);
      // Expired but not yet swept: the key is taken over in place.
      await waitFor(() => t.ctx.database.pool.query('select 1 from idempotency_keys where expires_at <= now()').then((r) => r.rowCount === 1), { what: 'the key to expire' });
      const third = await client.responses.create(body, opts);
      expect(third.id).not.toBe(later.id);
      expect(await keys()).toBe(1);
      await expectNoLeaks(t);
    } finally {
      await t.close();
    }
  });
});

describe('two processes, one database', () => {
  let a: TestServer;
  let b: TestServer;
  beforeAll(async () => {
    a = await startTestServer({ STUB_TOKEN_DELAY_MS: 5 });
    b = await a.sibling({ SSE_POLL_MS: 60_000 });
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
  });

  it('B streams, resumes, waits on and cancels a response executing on A', async () => {
    const s = await paidSession(a, 5000);
    const onA = new OpenAI({ baseURL: `${a.url}/v1`, apiKey: s.token });
    const onB = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: s.token });
    const r = await onA.responses.create({ model: 'sluice-stub', input: 'cross [stub:tokens=30] [stub:delay=10]', background: true });
    const first: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of await onB.responses.retrieve(r.id, { stream: true })) {
      first.push(e);
      if (first.length === 8) break;
    }
    const rest: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of await onB.responses.retrieve(r.id, { stream: true, starting_after: first.at(-1)!.sequence_number })) rest.push(e);
    expect([...first, ...rest].map((e) => e.sequence_number)).toEqual([...first, ...rest].map((_, i) => i));
    expect(rest.at(-1)!.type).toBe('response.completed');

    const long = await onA.responses.create({ model: 'sluice-stub', input: 'long [stub:tokens=500] [stub:delay=20]', background: true });
    await waitFor(async () => (await onB.responses.retrieve(long.id)).output_text.length > 0, { what: 'output on B' });
    const cancelled = await onB.responses.cancel(long.id);
    expect(cancelled.status).toBe('cancelled');
    expect(a.ctx.registry.get(runIdOfResponse(long.id)!)).toBeUndefined();
    await expectNoLeaks(a);
    await expectNoLeaks(b);
  });

  it('a turn enqueued on B behind one running on A starts when A finishes it, and sees its output', async () => {
    const s = await paidSession(a, 5000);
    const onA = new OpenAI({ baseURL: `${a.url}/v1`, apiKey: s.token });
    const onB = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: s.token });
    const conv = await onA.conversations.create();
    const first = await onA.responses.create({ model: 'sluice-stub', input: 'first [stub:tokens=20] [stub:delay=10]', conversation: conv.id, background: true });
    const second = await onB.responses.create({ model: 'sluice-stub', input: 'second [stub:echo]', conversation: conv.id, multitask_strategy: 'enqueue' } as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    const one = await onA.responses.retrieve(first.id);
    expect(one.status).toBe('completed');
    expect(second.output_text).toBe(`user: first [stub:tokens=20] [stub:delay=10]\nassistant: ${one.output_text}\nuser: second [stub:echo]`);
    expect((await b.ctx.database.pool.query(`select count(*)::int as n from runs where state = 'queued'`)).rows[0].n).toBe(0);
    await expectNoLeaks(a);
    await expectNoLeaks(b);
  });
});
