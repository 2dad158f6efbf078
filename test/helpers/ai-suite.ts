import OpenAI from 'openai';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { costSats } from '../../src/ledger/pricing.js';
import type { FakeHttp, Plan, RecordedRequest } from '../fakes/llm-http.js';
import { DEFAULT_CHUNKS } from '../fakes/llm-http.js';
import { startTestServer, type TestServer } from './context.js';
import { createJob, pay, waitJob } from './jobs.js';
import { expectLedgerBalanced, expectNoLeaks, getRequest, paidSession, postRequest, waitFinal, type PaidSession } from './sessions.js';
import { readSse } from './sse.js';
import { waitFor } from './wait.js';

/** What differs between the providers; everything else in `providerSuite` is the same for both. */
export interface ProviderHarness {
  provider: 'openai-compatible' | 'anthropic';
  /** The model's name at the fake. */
  upstreamModel: string;
  start(apiKey: string): Promise<FakeHttp & { usages: Array<Record<string, number>> }>;
  /** The catalogue's baseURL for the fake. */
  baseURL(fake: FakeHttp): string;
  /** The last usage the fake reported, as Sluice records it. */
  lastUsage(fake: FakeHttp & { usages: Array<Record<string, number>> }): { inputTokens: number; outputTokens: number };
  /** The input count the provider reports before the reply (Anthropic's `message_start`); null when it reports none until the end. */
  upFrontInput(req: RecordedRequest): number | null;
  /** The key as it went over the wire. */
  keyOnWire(req: RecordedRequest): string | undefined;
  /** More catalogue entries for a file's own tests (called once the fake is up). */
  extraModels?(fake: FakeHttp): object[];
}

/** Prices that make every token count in sats: 1 sat per input token, 2 per output token. */
const PRICES = { inputSatsPer1k: 1000, outputSatsPer1k: 2000 };
export const KEY_VAR = 'SLUICE_TEST_PROVIDER_KEY';

export interface ProviderSuite {
  server(): TestServer;
  fake(): FakeHttp & { usages: Array<Record<string, number>> };
  key: string;
  logs: string[];
  session(): Promise<PaidSession>;
  /** Post a session request and wait for its end; `calls` are the fake's requests it made. */
  ask(s: PaidSession, request: string, extra?: Record<string, unknown>): Promise<{ accepted: Awaited<ReturnType<typeof postRequest>>; final: any; calls: RecordedRequest[] }>;
}

/**
 * The whole server, driven over its HTTP API against a fake provider that speaks the real wire protocol: every
 * behaviour of issue #8's list, for one provider. Models: `m` (the default), `m-fast` (timeouts of 400 ms),
 * `m-small` (a context of 1024 tokens).
 */
export function providerSuite(h: ProviderHarness): ProviderSuite {
  const key = `sk-${h.provider === 'anthropic' ? 'ant-' : ''}test-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
  const logs: string[] = [];
  let fake: FakeHttp & { usages: Array<Record<string, number>> };
  let t: TestServer;

  beforeAll(async () => {
    fake = await h.start(key);
    const entry = (name: string, extra: object = {}) => ({
      name,
      provider: h.provider,
      baseURL: h.baseURL(fake),
      apiKeyEnv: KEY_VAR,
      upstreamModel: h.upstreamModel,
      ...PRICES,
      maxOutputTokens: 512,
      contextTokens: 8192,
      ...extra,
    });
    const catalogue = {
      default: 'm',
      models: [entry('m'), entry('m-fast', { firstTokenTimeoutMs: 400, idleTimeoutMs: 400 }), entry('m-small', { contextTokens: 1024, maxOutputTokens: 256 }), ...(h.extraModels?.(fake) ?? [])],
    };
    // Every line the server logs, at the most verbose level: the key must be in none of them.
    const log = pino({ level: 'trace' }, { write: (line: string) => void logs.push(line) });
    t = await startTestServer(
      { MODELS: JSON.stringify(catalogue), AI_RETRY_BASE_MS: 10, AI_FIRST_TOKEN_TIMEOUT_MS: 5_000, AI_IDLE_TIMEOUT_MS: 5_000, SESSION_MAX_SATS: 100_000 },
      { env: { [KEY_VAR]: key }, log },
    );
  });
  afterAll(async () => {
    await t?.close();
    await fake?.close();
  });
  afterEach(async () => {
    // Each test consumes exactly the plans it queued.
    expect(fake.plans).toEqual([]);
    await expectNoLeaks(t);
  });

  const plan = (...plans: Plan[]) => fake.plans.push(...plans);
  const session = () => paidSession(t, 20_000);
  const ask = async (s: PaidSession, request: string, extra: Record<string, unknown> = {}) => {
    const before = fake.requests.length;
    const accepted = await postRequest(t, s, request, { model: 'm', max_tokens: 64, ...extra });
    const final = await waitFinal(t, s, accepted.requestId);
    return { accepted, final, calls: fake.requests.slice(before) };
  };
  /** Resolves when the fake saw the connection close; fails past the deadline. */
  const closedWithin = (req: RecordedRequest, ms = 5_000) =>
    Promise.race([req.closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the fake never saw the connection close')), ms))]);

  /** One series of GET /metrics (0 when absent). */
  const metric = async (series: string) => {
    const text = (await t.http.get('/metrics').expect(200)).text;
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line ? Number(line.slice(series.length + 1)) : 0;
  };

  it('streams a reply: tokens as they come, the provider’s usage charged, the rest refunded', async () => {
    const s = await session();
    const tokensBefore = await metric(`sluice_tokens_streamed_total{provider="${h.provider}"}`);
    const accepted = await postRequest(t, s, 'Tell me about sluice gates.', { model: 'm', max_tokens: 64 });
    const sse = await readSse(`${t.url}/api/sessions/${s.id}/requests/${accepted.requestId}/stream`, { headers: s.auth });
    const tokens = sse.events.filter((e) => e.event === 'token').map((e) => e.data.content);
    expect(tokens).toEqual(DEFAULT_CHUNKS);
    const final = await getRequest(t, s, accepted.requestId);
    const usage = h.lastUsage(fake);
    expect(final).toMatchObject({ state: 'complete', stopReason: 'stop', result: DEFAULT_CHUNKS.join(''), usage });
    // A chunk is not a token: four chunks, more tokens, and the provider's count is what is charged.
    expect(usage.outputTokens).toBeGreaterThan(tokens.length);
    expect(final.chargedSats).toBe(costSats({ inputPer1k: 1000, outputPer1k: 2000, minSats: 1 }, usage.inputTokens, usage.outputTokens));
    // The debit covered the input as the provider counted it, and every token max_tokens allowed.
    expect(accepted.debitedSats).toBeGreaterThanOrEqual(usage.inputTokens + 2 * 64);
    expect(final.refundedSats).toBe(accepted.debitedSats - final.chargedSats);
    await expectLedgerBalanced(t, s);
    const call = fake.requests.at(-1)!;
    expect(call.body).toMatchObject({ model: h.upstreamModel, stream: true });
    expect(h.keyOnWire(call)).toBe(key);
    // The operator's token counter follows the provider's count too, not the chunks.
    expect((await metric(`sluice_tokens_streamed_total{provider="${h.provider}"}`)) - tokensBefore).toBe(usage.outputTokens);
  });

  it('429 then success: waits what retry-after says, then streams', async () => {
    const s = await session();
    plan({ type: 'error', status: 429, error: 'rate_limit', retryAfter: '1' }, { type: 'reply' });
    const { final, calls } = await ask(s, 'Rate limited first.');
    expect(final).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join('') });
    expect(calls).toHaveLength(2);
    expect(calls[1]!.at - calls[0]!.at).toBeGreaterThanOrEqual(950);
  });

  it('500 before the first token is retried; three in a row fail the run provider_unavailable, refunded in full', async () => {
    const s = await session();
    plan({ type: 'error', status: 500, error: 'server' }, { type: 'reply' });
    const once = await ask(s, 'A server error first.');
    expect(once.final.state).toBe('complete');
    expect(once.calls).toHaveLength(2);

    plan(...Array.from({ length: 3 }, () => ({ type: 'error', status: h.provider === 'anthropic' ? 529 : 500, error: h.provider === 'anthropic' ? 'overloaded' : 'server' }) as Plan));
    const thrice = await ask(s, 'Always failing.');
    expect(thrice.calls).toHaveLength(3);
    expect(thrice.final).toMatchObject({ state: 'failed', chargedSats: 0, refundedSats: thrice.accepted.debitedSats, error: { code: 'provider_unavailable' } });
    expect(thrice.final.error.message).toMatch(/^the model provider is unavailable \(HTTP 5\d\d, request req_[0-9a-f]{24}\)$/);
    await expectLedgerBalanced(t, s);
  });

  it('a connection dropped mid-stream fails the run provider_disconnected, charged for the text the client got, the rest refunded', async () => {
    const s = await session();
    plan({ type: 'reply', cutAfter: 2, cutHow: 'reset' });
    const { final, accepted, calls } = await ask(s, 'Cut me off.');
    expect(calls).toHaveLength(1);
    expect(final).toMatchObject({ state: 'failed', error: { code: 'provider_disconnected' }, result: DEFAULT_CHUNKS.slice(0, 2).join('') });
    // No usage arrived: the input is the provider's up-front count if it gave one, else the tokenizer's estimate;
    // the output is the tokenizer's count of the text the client saw. Never more than the debit.
    const tokenizer = t.ctx.models.tokenizer('m');
    const input = h.upFrontInput(calls[0]!) ?? tokenizer.contextEstimate([{ role: 'user', content: 'Cut me off.' }]);
    const expected = Math.min(accepted.debitedSats, costSats({ inputPer1k: 1000, outputPer1k: 2000, minSats: 1 }, input, tokenizer.textEstimate(final.result)));
    expect(expected).toBeGreaterThan(0);
    expect(final).toMatchObject({ chargedSats: expected, refundedSats: accepted.debitedSats - expected });
    await expectLedgerBalanced(t, s);
  });

  it('no first token within the timeout: provider_timeout, refunded, and the upstream connection closed', async () => {
    const s = await session();
    plan({ type: 'reply', stallAfter: 0 });
    const { final, accepted, calls } = await ask(s, 'Never answers.', { model: 'm-fast' });
    expect(calls).toHaveLength(1);
    expect(final).toMatchObject({ state: 'failed', error: { code: 'provider_timeout' }, chargedSats: 0, refundedSats: accepted.debitedSats });
    expect(final.error.message).toMatch(/no token within 400 ms/);
    await closedWithin(calls[0]!);
    expect(calls[0]!.clientClosed).toBe(true);
  });

  it('silence between tokens past the timeout: provider_timeout, refunded, and the upstream connection closed', async () => {
    const s = await session();
    plan({ type: 'reply', stallAfter: 2 });
    const { final, accepted, calls } = await ask(s, 'Goes quiet.', { model: 'm-fast' });
    expect(final).toMatchObject({ state: 'failed', error: { code: 'provider_timeout' }, chargedSats: 0, refundedSats: accepted.debitedSats, result: DEFAULT_CHUNKS.slice(0, 2).join('') });
    expect(final.error.message).toMatch(/silent for 400 ms/);
    await closedWithin(calls[0]!);
    expect(calls[0]!.clientClosed).toBe(true);
  });

  it('a stop through the runs API closes the upstream connection; it is charged for what was visibly produced', async () => {
    const s = await session();
    const chunks = Array.from({ length: 40 }, (_, i) => ` word${i} and more`);
    plan({ type: 'reply', chunks, gapMs: 100 });
    const before = fake.requests.length;
    const accepted = await postRequest(t, s, 'A long reply, please.', { model: 'm', max_tokens: 200 });
    await waitFor(async () => (await getRequest(t, s, accepted.requestId)).result.length > 0, { what: 'the first token' });
    await t.http.post(`/api/runs/${accepted.requestId}/stop`).set(s.auth).expect(202);
    const call = fake.requests[before]!;
    await closedWithin(call);
    expect(call.clientClosed).toBe(true);
    const final = await waitFinal(t, s, accepted.requestId);
    expect(final.state).toBe('cancelled');
    expect(final.result.length).toBeGreaterThan(0);
    expect(final.result.length).toBeLessThan(chunks.join('').length);
    // No final usage arrived: the input is the provider's count if it gave one up front, else the tokenizer's
    // estimate; the output is the tokenizer's count of the text the client saw (not one token per chunk).
    const tokenizer = t.ctx.models.tokenizer('m');
    const input = h.upFrontInput(call) ?? tokenizer.contextEstimate([{ role: 'user', content: 'A long reply, please.' }]);
    const output = tokenizer.textEstimate(final.result);
    expect(final.usage).toEqual({ inputTokens: input, outputTokens: output });
    expect(final.chargedSats).toBe(Math.min(accepted.debitedSats, costSats({ inputPer1k: 1000, outputPer1k: 2000, minSats: 1 }, input, output)));
    await expectLedgerBalanced(t, s);
  });

  it('a shutdown interrupts the run, refunds it in full, and closes the upstream connection', async () => {
    // A second process on the same database, so this one's shutdown leaves the suite's server running.
    const other = await t.sibling();
    const s = await session();
    plan({ type: 'reply', chunks: Array.from({ length: 40 }, (_, i) => ` part ${i}`), gapMs: 100 });
    const before = fake.requests.length;
    const accepted = await postRequest(other, s, 'Keep going until the server stops.', { model: 'm' });
    await waitFor(() => fake.requests.length > before, { what: 'the provider to be called' });
    await other.close();
    const call = fake.requests[before]!;
    await closedWithin(call);
    expect(call.clientClosed).toBe(true);
    const final = await waitFinal(t, s, accepted.requestId);
    expect(final).toMatchObject({ state: 'interrupted', chargedSats: 0, refundedSats: accepted.debitedSats });
    await expectLedgerBalanced(t, s);
  });

  it('an input that cannot fit the context is a 400 before any debit, and never reaches the provider', async () => {
    const s = await session();
    const balance = async () => (await t.http.get(`/api/sessions/${s.id}`).set(s.auth).expect(200)).body.balanceSats;
    const start = await balance();
    const before = fake.requests.length;
    // A text whose bound leaves less room than the model's maxOutputTokens, so the limit can be hit exactly.
    const tokenizer = t.ctx.models.get('m-small')!.tokenizer;
    let text = '';
    while (tokenizer.contextBound([{ role: 'user', content: text }]) < 850) text += 'The sluice keeper counts the water as it passes the gate. ';
    const bound = tokenizer.contextBound([{ role: 'user', content: text }]);
    expect(bound).toBeLessThan(1024);
    // One token more than the context holds is refused, with the counts; exactly at the limit is accepted (below).
    const refused = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: text, model: 'm-small', max_tokens: 1024 - bound + 1 });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toMatchObject({ code: 'context_length_exceeded', details: { inputTokens: bound, maxTokens: 1024 - bound + 1, contextTokens: 1024 } });
    const huge = await t.http.post(`/api/sessions/${s.id}/request`).set(s.auth).send({ request: text.repeat(2).slice(0, 7000), model: 'm-small', max_tokens: 16 });
    expect(huge.status).toBe(400);
    expect(huge.body.error.code).toBe('context_length_exceeded');
    expect(await balance()).toBe(start);
    expect(fake.requests.length).toBe(before);
    const fits = await ask(s, text, { model: 'm-small', max_tokens: 1024 - bound });
    expect(fits.final.state).toBe('complete');
  });

  it('the provider’s own context error fails the run context_length_exceeded, refunded in full', async () => {
    const s = await session();
    plan({ type: 'error', status: 400, error: 'context_length' });
    const { final, accepted, calls } = await ask(s, 'The provider counts differently.');
    expect(calls).toHaveLength(1);
    expect(final).toMatchObject({ state: 'failed', error: { code: 'context_length_exceeded' }, chargedSats: 0, refundedSats: accepted.debitedSats });
  });

  it('a max-tokens stop is `incomplete` on /v1 (the openai SDK against Sluice), charged as the provider counted', async () => {
    const s = await session();
    plan({ type: 'reply', stop: 'max_tokens' });
    const client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: s.token, maxRetries: 0 });
    const response = await client.responses.create({ model: 'm', input: 'Go on and on.', max_output_tokens: 16 });
    expect(response.status).toBe('incomplete');
    expect(response.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(response.output_text).toBe(DEFAULT_CHUNKS.join(''));
    const usage = h.lastUsage(fake);
    expect(response.usage).toMatchObject({ input_tokens: usage.inputTokens, output_tokens: usage.outputTokens });
    const body = fake.requests.at(-1)!.body;
    expect(body.max_tokens ?? body.max_completion_tokens).toBe(16);
  });

  it('a job: evaluated locally, its work streamed by the provider, the unused part owed back', async () => {
    const request = 'Explain in one line what a sluice is.';
    const job = await createJob(t, request);
    await pay(t, job.evalInvoice.paymentHash);
    const quoted = await waitJob(t, job.jobId, ['awaiting_work_payment']);
    const bound = t.ctx.models.tokenizer('m').contextBound([{ role: 'user', content: request }]);
    expect(quoted.pricingBreakdown).toMatchObject({ estimatedInputTokens: bound, estimatedOutputTokens: t.ctx.config.DEFAULT_MAX_TOKENS });
    const before = fake.requests.length;
    await pay(t, quoted.workInvoice.paymentHash);
    const done = await waitJob(t, job.jobId, ['complete', 'failed']);
    expect(done).toMatchObject({ state: 'complete', result: DEFAULT_CHUNKS.join('') });
    const usage = h.lastUsage(fake);
    expect(done.costLedger).toMatchObject({ actualInputTokens: usage.inputTokens, actualOutputTokens: usage.outputTokens });
    expect(done.costLedger.refundAmountSats).toBe(done.costLedger.workAmountSats - done.costLedger.actualAmountSats);
    expect(done.costLedger.refundAmountSats).toBeGreaterThan(0);
    const call = fake.requests[before]!;
    expect(call.body.max_tokens ?? call.body.max_completion_tokens).toBe(t.ctx.config.DEFAULT_MAX_TOKENS);
  });

  it('the key is in no response, no run error and no log line — even when the provider echoes it', async () => {
    const s = await session();
    plan({ type: 'error', status: 401, error: 'echo_key' });
    const { final, accepted, calls } = await ask(s, 'Who am I?');
    expect(calls).toHaveLength(1);
    expect(h.keyOnWire(calls[0]!)).toBe(key);
    expect(final).toMatchObject({ state: 'failed', error: { code: 'provider_auth_failed' } });
    const run = await t.http.get(`/api/runs/${accepted.requestId}`).set(s.auth).expect(200);
    const list = await t.http.get('/api/runs').set(s.auth).expect(200);
    const sse = await readSse(`${t.url}/api/runs/${accepted.requestId}/stream`, { headers: s.auth });
    expect(sse.events.at(-1)).toMatchObject({ event: 'error', data: { code: 'provider_auth_failed' } });
    for (const text of [JSON.stringify(final), JSON.stringify(run.body), JSON.stringify(list.body), sse.raw]) expect(text).not.toContain(key);
    // The server did log the failure (scrubbed), and nothing it ever logged holds the key.
    expect(logs.some((l) => l.includes('provider_auth_failed'))).toBe(true);
    expect(logs.join('\n')).not.toContain(key);
  });

  return { server: () => t, fake: () => fake, key, logs, session, ask };
}
