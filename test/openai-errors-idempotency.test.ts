import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { runIdOf, sluiceOf, useV1Server } from './helpers/openai.js';

/**
 * Idempotent retries (sequential and concurrent, on both faces) that debit once, and every error the /v1 face
 * sends raised as the SDK's own class — with `x-should-retry: false` where a retry cannot help, which the SDK
 * obeys (the server sees one request, not three).
 */
const srv = useV1Server();

const key = () => `key-${Math.random().toString(36).slice(2)}`;
const debits = (entries: Array<{ kind: string }>) => entries.filter((e) => e.kind === 'debit').length;

describe('Idempotency-Key on /v1/responses', () => {
  it('a sequential retry gets the same response and no second debit', async () => {
    const s = await srv().session();
    const k = key();
    const body = { model: 'sluice-stub', input: 'once [stub:tokens=3]', metadata: { a: '1' } };
    const first = await s.client.responses.create(body, { headers: { 'Idempotency-Key': k } });
    const again = await s.client.responses.create({ metadata: { a: '1' }, input: 'once [stub:tokens=3]', model: 'sluice-stub' }, { headers: { 'Idempotency-Key': k } });
    expect(again.id).toBe(first.id);
    expect(again.output_text).toBe(first.output_text);
    expect(debits((await srv().ledger(s)).entries)).toBe(1);
  });

  it('concurrent identical requests debit once and all get the same response, sync and stream alike', async () => {
    const s = await srv().session();
    const k = key();
    const body = { model: 'sluice-stub', input: 'race [stub:tokens=10] [stub:delay=10]' };
    const results = await Promise.all(Array.from({ length: 6 }, () => s.client.responses.create(body, { headers: { 'Idempotency-Key': k } })));
    expect(new Set(results.map((r) => r.id)).size).toBe(1);
    expect(results.every((r) => r.status === 'completed' && r.output_text === results[0]!.output_text)).toBe(true);

    const ks = key();
    const streamBody = { model: 'sluice-stub', input: 'race stream [stub:tokens=10] [stub:delay=10]', stream: true as const };
    const streams = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const events: OpenAI.Responses.ResponseStreamEvent[] = [];
        for await (const e of await s.client.responses.create(streamBody, { headers: { 'Idempotency-Key': ks } })) events.push(e);
        return events;
      }),
    );
    // Every stream reattached to the one run: the whole replay, then live, identical.
    for (const events of streams) expect(events).toEqual(streams[0]);
    expect(streams[0]!.at(-1)!.type).toBe('response.completed');
    expect(debits((await srv().ledger(s)).entries)).toBe(2);
  });

  it('the same key with another body is 409 idempotency_key_conflict, not retried', async () => {
    const s = await srv().session();
    const k = key();
    await s.client.responses.create({ model: 'sluice-stub', input: 'first [stub:tokens=1]' }, { headers: { 'Idempotency-Key': k } });
    const before = await srv().requestsTo('POST', '/v1/responses');
    const err = await s.client.responses.create({ model: 'sluice-stub', input: 'other [stub:tokens=1]' }, { headers: { 'Idempotency-Key': k } }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.ConflictError);
    expect(err).toMatchObject({ code: 'idempotency_key_conflict', param: 'Idempotency-Key' });
    expect(err.headers.get('x-should-retry')).toBe('false');
    expect((await srv().requestsTo('POST', '/v1/responses')) - before).toBe(1);
    // Keys belong to a session: another session's same key is its own.
    const other = await srv().session();
    const mine = await other.client.responses.create({ model: 'sluice-stub', input: 'other [stub:tokens=1]' }, { headers: { 'Idempotency-Key': k } });
    expect(mine.status).toBe('completed');
  });
});

describe('Idempotency-Key on POST /api/sessions/:id/request', () => {
  it('same rules: the first 202 again, one debit; another body is a 409 in the /api envelope', async () => {
    const s = await srv().session();
    const k = key();
    const call = (request: string) =>
      fetch(`${srv().url}/api/sessions/${s.id}/request`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'Idempotency-Key': k },
        body: JSON.stringify({ request }),
      });
    const [a, b] = await Promise.all([call('api once [stub:tokens=2]'), call('api once [stub:tokens=2]')]);
    expect([a.status, b.status]).toEqual([202, 202]);
    const [ja, jb] = [await a.json(), await b.json()];
    expect(jb).toEqual(ja);
    expect([a.headers.get('idempotent-replayed'), b.headers.get('idempotent-replayed')].filter(Boolean)).toEqual(['true']);
    const conflict = await call('something else');
    expect(conflict.status).toBe(409);
    expect((await conflict.json()).error.code).toBe('idempotency_key_conflict');
    expect(debits((await srv().ledger(s)).entries)).toBe(1);
  });
});

describe('errors raise the SDK’s own classes', () => {
  it('401 AuthenticationError for a bad key; 401 without one', async () => {
    const bad = new OpenAI({ baseURL: `${srv().url}/v1`, apiKey: 'sk_not_a_session' });
    const err = await bad.responses.create({ model: 'sluice-stub', input: 'x' }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(err.code).toBe('invalid_api_key');
    const none = await fetch(`${srv().url}/v1/models`);
    expect(none.status).toBe(401);
    expect((await none.json()).error).toMatchObject({ type: 'invalid_request_error', message: expect.stringContaining('API key') });
  });

  it('404 NotFoundError for another session’s response, an unknown one, and an unknown model', async () => {
    const a = await srv().session();
    const b = await srv().session();
    const r = await a.client.responses.create({ model: 'sluice-stub', input: 'mine [stub:tokens=1]' });
    for (const call of [() => b.client.responses.retrieve(r.id), () => b.client.responses.cancel(r.id), () => b.client.responses.delete(r.id), () => b.client.responses.retrieve('resp_123')]) {
      await expect(call()).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    }
    const model = await a.client.responses.create({ model: 'gpt-9', input: 'x' }).catch((e) => e);
    expect(model).toBeInstanceOf(OpenAI.NotFoundError);
    expect(model).toMatchObject({ code: 'model_not_found', message: expect.stringContaining('gpt-9') });
    // The session's own response is untouched.
    expect((await a.client.responses.retrieve(r.id)).status).toBe('completed');
  });

  it('429 RateLimitError insufficient_quota when the balance cannot pay, not retried', async () => {
    const s = await srv().session(100);
    const before = await srv().requestsTo('POST', '/v1/responses');
    const err = await s.client.responses.create({ model: 'sluice-stub', input: 'too big', max_output_tokens: 4096 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err).toMatchObject({ status: 429, type: 'insufficient_quota', code: 'insufficient_quota' });
    expect(err.headers.get('x-should-retry')).toBe('false');
    expect((await srv().requestsTo('POST', '/v1/responses')) - before).toBe(1);
    expect((await srv().ledger(s)).balanceSats).toBe(100);
  });

  it('400 BadRequestError naming the param', async () => {
    const { client } = await srv().session();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ model: 'sluice-stub' }, 'input'],
      [{ model: 'sluice-stub', input: 42 }, 'input'],
      [{ model: 'sluice-stub', input: 'x', max_output_tokens: 0 }, 'max_output_tokens'],
      [{ model: 'sluice-stub', input: 'x', max_output_tokens: 999_999 }, 'max_output_tokens'],
      [{ model: 'sluice-stub', input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[0].content[0].type'],
      [{ model: 'sluice-stub', input: 'x', metadata: { k: 7 } }, 'metadata.k'],
      [{ model: 'sluice-stub', input: 'x', tools: [{ type: 'web_search' }] }, 'tools'],
      [{ model: 'sluice-stub', input: 'x', multitask_strategy: 'yolo' }, 'multitask_strategy'],
      [{ model: 'sluice-stub', input: 'nul\u0000' }, 'input'],
      [{ model: 'sluice-stub', input: 'lone surrogate \ud800' }, 'input'],
      [{ model: 'sluice-stub', input: 'x', instructions: '\udc00' }, 'instructions'],
      // Structured outputs and forced tool calls cannot be honoured: refused by name, not answered with prose.
      [{ model: 'sluice-stub', input: 'x', text: { format: { type: 'json_schema', name: 'x', schema: {} } } }, 'text.format.type'],
      [{ model: 'sluice-stub', input: 'x', text: { format: { type: 'json_object' } } }, 'text.format.type'],
      [{ model: 'sluice-stub', input: 'x', tool_choice: 'required' }, 'tool_choice'],
    ];
    for (const [body, param] of cases) {
      const err = await client.responses.create(body as never).catch((e) => e);
      expect(err, JSON.stringify(body)).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.param, JSON.stringify(body)).toBe(param);
      expect(err.type).toBe('invalid_request_error');
    }
    // A value of the right type but not storable is named for what it is.
    const nul = await client.responses.create({ model: 'sluice-stub', input: 'nul\u0000' }).catch((e) => e);
    expect(nul.message).toContain('must not contain NUL characters');
    // What changes nothing here is accepted: plain text output, tool_choice none or auto, a verbosity.
    const plain = await client.responses.create({ model: 'sluice-stub', input: 'x [stub:tokens=2]', text: { format: { type: 'text' }, verbosity: 'low' }, tool_choice: 'auto' });
    expect(plain.status).toBe('completed');
    const json = await fetch(`${srv().url}/v1/responses`, { method: 'POST', headers: { authorization: `Bearer ${client.apiKey}`, 'content-type': 'application/json' }, body: '{"input":' });
    expect(json.status).toBe(400);
    expect(json.headers.get('x-should-retry')).toBe('false');
    expect(json.headers.get('x-request-id')).toEqual(expect.any(String));
    const route = await fetch(`${srv().url}/v1/nothing`, { headers: { authorization: `Bearer ${client.apiKey}` } });
    expect(route.status).toBe(404);
    expect((await route.json()).error.type).toBe('invalid_request_error');
  });

  it('a failed response is a Response with status failed (refunded), not an HTTP error', async () => {
    const s = await srv().session();
    const r = await s.client.responses.create({ model: 'sluice-stub', input: 'doomed [stub:tokens=10] [stub:fail]' });
    expect(r).toMatchObject({ status: 'failed', error: { code: 'server_error', message: expect.stringContaining('[stub:fail]') } });
    const m = sluiceOf(r);
    expect(m.charged_sats).toBe(0);
    expect(m.refunded_sats).toBe(m.debited_sats);
    expect((await srv().api('GET', `/api/runs/${runIdOf(r)}`, s.token)).body.state).toBe('failed');
  });
});
