import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { costSats } from '../src/ledger/pricing.js';
import { DEFAULT_CHUNKS } from './fakes/llm-http.js';
import { promptTokens, startFakeOpenAi, type FakeOpenAi } from './fakes/openai-chat.js';
import { providerSuite } from './helpers/ai-suite.js';
import { expectLedgerBalanced } from './helpers/sessions.js';

/** A local model server that wants no key (Ollama, llama.cpp's server), serving a model that is not OpenAI's. */
let local: FakeOpenAi;
beforeAll(async () => {
  local = await startFakeOpenAi({ apiKey: 'none', keyless: true, models: ['llama3.1:8b'] });
});
afterAll(() => local?.close());

describe('openai-compatible against a fake OpenAI Chat Completions server', () => {
  const suite = providerSuite({
    provider: 'openai-compatible',
    upstreamModel: 'gpt-4o-mini',
    start: (apiKey) => startFakeOpenAi({ apiKey }),
    baseURL: (fake) => `${fake.url}/v1`,
    lastUsage: (fake) => {
      const u = fake.usages.at(-1)!;
      return { inputTokens: u.prompt_tokens!, outputTokens: u.completion_tokens! };
    },
    upFrontInput: () => null,
    keyOnWire: (req) => /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1],
    extraModels: () => [
      { name: 'local', provider: 'openai-compatible', baseURL: `${local.url}/v1`, upstreamModel: 'llama3.1:8b', inputSatsPer1k: 1000, outputSatsPer1k: 2000, maxOutputTokens: 512, contextTokens: 8192 },
    ],
  });
  const fake = () => suite.fake() as FakeOpenAi;
  const prices = { inputPer1k: 1000, outputPer1k: 2000, minSats: 1 };

  it('sends what Chat Completions expects, and counts the input exactly as OpenAI does for its own models', async () => {
    const s = await suite.session();
    const { final, calls } = await suite.ask(s, 'Count me exactly: naïve café, 東京, <|endoftext|> and all.');
    expect(calls[0]!.body).toEqual({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Count me exactly: naïve café, 東京, <|endoftext|> and all.' }],
      max_tokens: 64,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(calls[0]!.headers['content-type']).toBe('application/json');
    // The tokenizer's bound (what was debited for the input) is OpenAI's own prompt_tokens: no guess.
    expect(final.usage.inputTokens).toBe(promptTokens(calls[0]!.body.messages));
    expect(suite.server().ctx.models.tokenizer('m').contextBound(calls[0]!.body.messages)).toBe(final.usage.inputTokens);
  });

  it('takes usage from the finish chunk, and estimates it when the server sends none', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'reply', usage: 'with-finish' });
    const withFinish = await suite.ask(s, 'Usage on the finish chunk.');
    expect(withFinish.final).toMatchObject({ state: 'complete', usage: { inputTokens: fake().usages.at(-1)!.prompt_tokens, outputTokens: fake().usages.at(-1)!.completion_tokens } });

    fake().plans.push({ type: 'reply', usage: 'none' });
    const none = await suite.ask(s, 'No usage at all.');
    const tokenizer = suite.server().ctx.models.tokenizer('m');
    const input = tokenizer.contextEstimate([{ role: 'user', content: 'No usage at all.' }]);
    const output = tokenizer.textEstimate(DEFAULT_CHUNKS.join(''));
    expect(none.final).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join(''), usage: { inputTokens: input, outputTokens: output } });
    expect(none.final.chargedSats).toBe(costSats(prices, input, output));
    await expectLedgerBalanced(suite.server(), s);
  });

  it('a stream that ends cleanly without a finish_reason was cut: provider_disconnected, charged for the text sent', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'reply', cutAfter: 3, cutHow: 'eof' });
    const { final, accepted } = await suite.ask(s, 'End without finishing.');
    expect(final).toMatchObject({ state: 'failed', error: { code: 'provider_disconnected' }, result: DEFAULT_CHUNKS.slice(0, 3).join('') });
    const tokenizer = suite.server().ctx.models.tokenizer('m');
    const input = tokenizer.contextEstimate([{ role: 'user', content: 'End without finishing.' }]);
    const charged = Math.min(accepted.debitedSats, costSats(prices, input, tokenizer.textEstimate(final.result)));
    expect(final).toMatchObject({ chargedSats: charged, refundedSats: accepted.debitedSats - charged });
    await expectLedgerBalanced(suite.server(), s);
  });

  it('an error inside the stream before the first token is retried; after one it fails the run', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'reply', errorAfter: 0 }, { type: 'reply' });
    const retried = await suite.ask(s, 'An in-stream error first.');
    expect(retried.calls).toHaveLength(2);
    expect(retried.final.state).toBe('complete');

    fake().plans.push({ type: 'reply', errorAfter: 1 });
    const failed = await suite.ask(s, 'An in-stream error later.');
    expect(failed.calls).toHaveLength(1);
    expect(failed.final).toMatchObject({ state: 'failed', error: { code: 'provider_unavailable' }, chargedSats: 0, result: DEFAULT_CHUNKS[0] });
  });

  it('a keyless local server gets no Authorization header; its model is bounded with a margin (not OpenAI’s tokenizer)', async () => {
    const s = await suite.session();
    const before = local.requests.length;
    const accepted = await suite.ask(s, 'Hello, llama.', { model: 'local' });
    expect(accepted.final.state).toBe('complete');
    const call = local.requests[before]!;
    expect(call.headers.authorization).toBeUndefined();
    expect(call.body.model).toBe('llama3.1:8b');
    const tokenizer = suite.server().ctx.models.tokenizer('local');
    expect(tokenizer.name).toBe('cl100k_base ×1.4 (estimate)');
    // The debit's input bound is above the count the server reported.
    expect(tokenizer.contextBound(call.body.messages)).toBeGreaterThan(local.usages.at(-1)!.prompt_tokens);
  });

  it('an unknown upstream model is provider_rejected, refunded, in our words with the provider’s request id', async () => {
    const s = await suite.session();
    fake().plans.push({ type: 'error', status: 404, error: 'model_not_found' });
    const missing = await suite.ask(s, 'Which model?');
    expect(missing.final).toMatchObject({ state: 'failed', error: { code: 'provider_rejected' }, chargedSats: 0 });
    expect(missing.final.error.message).toMatch(/HTTP 404, request req_[0-9a-f]{24}/);
    // Our message, never the provider's (which names the operator's organisation, keys, models).
    expect(missing.final.error.message).not.toMatch(/does not exist/);
  });
});
