import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { sluiceOf, useV1Server } from './helpers/openai.js';
import { startServerProcess } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';

/**
 * `/v1/chat/completions` and `/v1/models` with the SDK against the real server process, configured with a
 * catalogue of two stub models at different prices (MODELS), so per-model prices and limits are visible.
 */
const CATALOGUE = {
  default: 'cheap',
  models: [
    { name: 'cheap', provider: 'stub', inputSatsPer1k: 10, outputSatsPer1k: 40, maxOutputTokens: 512, contextTokens: 4096 },
    { name: 'org/pricey-1', provider: 'stub', upstreamModel: 'pricey', inputSatsPer1k: 1000, outputSatsPer1k: 2000, maxOutputTokens: 64, contextTokens: 600 },
  ],
};

const srv = useV1Server({ MODELS: JSON.stringify(CATALOGUE) });

/** A chat completion's run id (the id is `chatcmpl-` and the run's uuid without dashes). */
const runIdOf = (id: string) => id.replace(/^chatcmpl-(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');

describe('chat completions', () => {
  it('non-stream: the messages are the context, with usage, finish_reason and the sats', async () => {
    const { client, token } = await srv().session();
    const c = await client.chat.completions.create({
      model: 'cheap',
      messages: [
        { role: 'developer', content: 'be kind' },
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'hello' },
        { role: 'user', content: [{ type: 'text', text: 'again [stub:echo]' }] },
      ],
    });
    expect(c).toMatchObject({ object: 'chat.completion', model: 'cheap', choices: [{ index: 0, finish_reason: 'stop', message: { role: 'assistant' } }] });
    expect(c.choices[0]!.message.content).toBe('system: be kind\nuser: hi\nassistant: hello\nuser: again [stub:echo]');
    expect(c.usage!.total_tokens).toBe(c.usage!.prompt_tokens + c.usage!.completion_tokens);
    const run = (await srv().api('GET', `/api/runs/${runIdOf(c.id)}`, token)).body;
    expect(run).toMatchObject({ face: 'chat', state: 'complete', result: c.choices[0]!.message.content, model: 'cheap' });
    const capped = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'long [stub:tokens=40]' }], max_completion_tokens: 4 });
    expect(capped.choices[0]!.finish_reason).toBe('length');
    expect(capped.usage!.completion_tokens).toBe(4);
  });

  it('stream: chunks with finish_reason on the last content chunk, a usage chunk when asked, then [DONE]', async () => {
    const { client } = await srv().session();
    const stream = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'go [stub:tokens=5]' }], stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '' });
    const content = chunks.filter((c) => c.choices[0]?.delta.content);
    expect(content).toHaveLength(5);
    expect(content.slice(0, 4).every((c) => c.choices[0]!.finish_reason === null)).toBe(true);
    expect(content[4]!.choices[0]!.finish_reason).toBe('stop');
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ completion_tokens: 5 });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    // Byte for byte: plain `data:` frames ending with [DONE].
    const raw = await fetch(`${srv().url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${client.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'cheap', messages: [{ role: 'user', content: 'raw [stub:tokens=2]' }], stream: true }),
    }).then((r) => r.text());
    expect(raw.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(raw).not.toMatch(/^event:/m);
    expect(raw).not.toContain('"usage"');
  });

  it('the SDK’s stream helper assembles the same completion', async () => {
    const { client } = await srv().session();
    const final = await client.chat.completions.stream({ model: 'cheap', messages: [{ role: 'user', content: 'helper [stub:tokens=6]' }] }).finalChatCompletion();
    expect(final.choices[0]!.message.content!.split(' ')).toHaveLength(6);
    expect(final.choices[0]!.finish_reason).toBe('stop');
  });

  it('a disconnect stops the run and charges only what was produced', async () => {
    const { client, token } = await srv().session();
    const stream = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'long [stub:tokens=300] [stub:delay=20]' }], stream: true });
    let id = '';
    let n = 0;
    for await (const c of stream) {
      id = c.id;
      if (++n === 4) break;
    }
    const run = await waitFor(async () => {
      const r = (await srv().api('GET', `/api/runs/${runIdOf(id)}`, token)).body;
      return r.state === 'cancelled' ? r : null;
    }, { what: 'the abandoned completion to be cancelled' });
    expect(run.chargedSats).toBeGreaterThan(0);
    expect(run.chargedSats + run.refundedSats).toBe(run.debitedSats);
    expect(run.usage.outputTokens).toBeLessThan(300);
  });

  it('a provider failure is the SDK’s InternalServerError (refunded), in a stream too', async () => {
    const { client, id, token } = await srv().session(5000, { maxRetries: 0 });
    const err = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'doomed [stub:fail] [stub:tokens=6]' }] }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err).toMatchObject({ status: 502, code: 'provider_error' });
    const stream = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'doomed [stub:fail] [stub:tokens=6]' }], stream: true });
    const got: string[] = [];
    const thrown = await (async () => {
      for await (const c of stream) got.push(c.choices[0]?.delta.content ?? '');
    })().catch((e) => e);
    expect(thrown).toBeInstanceOf(OpenAI.APIError);
    expect(thrown.message).toContain('[stub:fail]');
    expect(got.join('').length).toBeGreaterThan(0);
    const ledger = await srv().ledger({ id, token });
    expect(ledger.balanceSats).toBe(5000);
  });

  it('refuses what it cannot do, naming the param', async () => {
    const { client } = await srv().session();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ model: 'cheap', messages: [] }, 'messages'],
      [{ model: 'cheap', messages: [{ role: 'tool', content: 'x', tool_call_id: 'a' }] }, 'messages[0].role'],
      [{ model: 'cheap', messages: [{ role: 'user', content: 'x' }], n: 2 }, 'n'],
      [{ model: 'cheap', messages: [{ role: 'user', content: 'x' }], max_tokens: 513 }, 'max_tokens'],
      [{ model: 'cheap', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' } }, 'response_format.type'],
      [{ model: 'cheap', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, 'response_format.type'],
      [{ model: 'cheap', messages: [{ role: 'user', content: 'x' }], tool_choice: { type: 'function', function: { name: 'f' } } }, 'tool_choice'],
    ];
    for (const [body, param] of cases) {
      const err = await client.chat.completions.create(body as never).catch((e) => e);
      expect(err, JSON.stringify(body)).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.param).toBe(param);
    }
    await expect(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const plain = await client.chat.completions.create({ model: 'cheap', messages: [{ role: 'user', content: 'x [stub:tokens=2]' }], response_format: { type: 'text' }, tool_choice: 'none' });
    expect(plain.choices[0]!.finish_reason).toBe('stop');
  });
});

describe('the model catalogue', () => {
  it('GET /v1/models lists it with prices; a model name may hold a slash', async () => {
    const { client } = await srv().session();
    const models = [];
    for await (const m of client.models.list()) models.push(m);
    expect(models.map((m) => m.id)).toEqual(['cheap', 'org/pricey-1']);
    expect(models[1]).toMatchObject({ object: 'model', owned_by: 'sluice', sluice: { input_sats_per_1k: 1000, output_sats_per_1k: 2000, max_output_tokens: 64, context_tokens: 600, default: false } });
    expect((await client.models.retrieve('org/pricey-1')).id).toBe('org/pricey-1');
    await expect(client.models.retrieve('gpt-4o')).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
  });

  it('prices are per model and snapshotted on the run; limits are per model', async () => {
    const { client, id, token } = await srv().session(5000);
    const cheap = await client.responses.create({ model: 'cheap', input: 'x [stub:tokens=4]', max_output_tokens: 8 });
    const pricey = await client.responses.create({ model: 'org/pricey-1', input: 'x [stub:tokens=4]', max_output_tokens: 8 });
    const sats = sluiceOf;
    expect(sats(pricey).debited_sats).toBeGreaterThan(sats(cheap).debited_sats * 10);
    expect(sats(pricey).charged_sats).toBe(Math.ceil((pricey.usage!.input_tokens * 1000 + 4 * 2000) / 1000));
    await expect(client.responses.create({ model: 'org/pricey-1', input: 'x', max_output_tokens: 65 })).rejects.toMatchObject({ status: 400, param: 'max_output_tokens' });
    const tooLong = await client.responses.create({ model: 'org/pricey-1', input: 'y'.repeat(4000), max_output_tokens: 8 }).catch((e) => e);
    expect(tooLong).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'input' });
    // The native face takes `model` too: unknown is a 400 there.
    const native = await srv().api('POST', `/api/sessions/${id}/request`, token, { request: 'x [stub:tokens=1]', model: 'org/pricey-1', max_tokens: 2 });
    expect(native.status).toBe(202);
    const run = await waitFor(async () => {
      const r = (await srv().api('GET', `/api/runs/${native.body.requestId}`, token)).body;
      return r.state === 'complete' ? r : null;
    });
    expect(run.model).toBe('org/pricey-1');
    const unknown = await srv().api('POST', `/api/sessions/${id}/request`, token, { request: 'x', model: 'gpt-4o' });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.code).toBe('model_not_found');
  });

  it('a bad catalogue stops start-up with every mistake named', async () => {
    const bad = { default: 'missing', models: [{ name: 'a', provider: 'martian', inputSatsPer1k: -1, outputSatsPer1k: 1, maxOutputTokens: 10, contextTokens: 5, typo: 1 }] };
    const err = await startServerProcess({ MODELS: JSON.stringify(bad), DATABASE_URL: 'postgres://127.0.0.1:1/none' }, 30_000).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    const text = (err as Error).message;
    for (const part of ['MODELS.models[0]', 'inputSatsPer1k', 'typo', 'MODELS.default']) expect(text).toContain(part);
  });
});
