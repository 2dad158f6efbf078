import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { runIdOf, sluiceOf, useV1Server } from './helpers/openai.js';
import { waitFor } from './helpers/wait.js';

/**
 * `/v1/responses` with the official `openai` SDK (6.x, unmodified) against the real server process: the three
 * modes, streams read with `for await` and with the `responses.stream` helper, exact resume, cancel, delete and
 * input items — and the money of each, read back from the session's ledger.
 */
const srv = useV1Server();

type Ev = OpenAI.Responses.ResponseStreamEvent;

describe('creating responses', () => {
  it('sync: waits and returns the completed Response, with usage and the sats of its run', async () => {
    const { client, id, token } = await srv().session();
    const r = await client.responses.create({ model: 'sluice-stub', input: 'hello [stub:tokens=6]' });
    expect(r).toMatchObject({ object: 'response', status: 'completed', model: 'sluice-stub', error: null, incomplete_details: null, background: false });
    expect(r.id).toMatch(/^resp_[0-9a-f]{32}$/);
    expect(r.output).toHaveLength(1);
    expect(r.output[0]).toMatchObject({ type: 'message', role: 'assistant', status: 'completed' });
    expect(r.output_text.split(' ')).toHaveLength(6);
    expect(r.usage).toMatchObject({ output_tokens: 6, total_tokens: r.usage!.input_tokens + 6 });
    const m = sluiceOf(r);
    expect(m.charged_sats + m.refunded_sats).toBe(m.debited_sats);
    // The response is a run: in the runs API, with the same text, and in the ledger.
    const run = await srv().api('GET', `/api/runs/${runIdOf(r)}`, token);
    expect(run.body).toMatchObject({ state: 'complete', result: r.output_text, chargedSats: m.charged_sats, model: 'sluice-stub', stopReason: 'stop' });
    const ledger = await srv().ledger({ id, token });
    expect(ledger.entries.filter((e) => e.runId === runIdOf(r)).map((e) => e.amountSats).sort((a, b) => a - b)).toEqual([-m.debited_sats, m.refunded_sats].sort((a, b) => a - b));
    expect(r._request_id).toEqual(expect.any(String));
  });

  it('ends incomplete with reason max_output_tokens when the cap stops the model', async () => {
    const { client } = await srv().session();
    const r = await client.responses.create({ model: 'sluice-stub', input: 'long [stub:tokens=50]', max_output_tokens: 5 });
    expect(r).toMatchObject({ status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' }, max_output_tokens: 5 });
    expect(r.usage!.output_tokens).toBe(5);
    expect(r.output[0]).toMatchObject({ status: 'incomplete' });
  });

  it('background: answers at once with queued, then the response completes and can be polled', async () => {
    const { client } = await srv().session();
    const started = Date.now();
    const r = await client.responses.create({ model: 'sluice-stub', input: 'slow [stub:tokens=20] [stub:delay=20]', background: true, metadata: { job: 'poll' } });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(r).toMatchObject({ status: 'queued', background: true, metadata: { job: 'poll' }, output: [] });
    const done = await waitFor(async () => {
      const now = await client.responses.retrieve(r.id);
      expect(['queued', 'in_progress', 'completed']).toContain(now.status);
      return now.status === 'completed' ? now : null;
    }, { timeoutMs: 10_000, what: 'the background response' });
    expect(done.output_text.split(' ')).toHaveLength(20);
    expect(done.metadata).toEqual({ job: 'poll' });
  });

  it('stream: for await yields the Response events in order, numbered from 0 like their SSE ids', async () => {
    const { client } = await srv().session();
    const stream = await client.responses.create({ model: 'sluice-stub', input: 'stream me [stub:tokens=8]', stream: true });
    const events: Ev[] = [];
    for await (const e of stream) events.push(e);
    const types = events.map((e) => e.type);
    expect(types.slice(0, 4)).toEqual(['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    expect(types.slice(4, 12)).toEqual(Array(8).fill('response.output_text.delta'));
    expect(types.slice(12)).toEqual(['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed']);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => (e as OpenAI.Responses.ResponseTextDeltaEvent).delta).join('');
    const last = events.at(-1) as OpenAI.Responses.ResponseCompletedEvent;
    expect(last.response.output_text ?? (last.response.output[0] as OpenAI.Responses.ResponseOutputMessage).content[0]).toBeTruthy();
    expect((events[12] as OpenAI.Responses.ResponseTextDoneEvent).text).toBe(text);
    // The frames' ids are the sequence numbers (what Last-Event-ID and starting_after resume from).
    const res = await fetch(`${srv().url}/v1/responses/${last.response.id}?stream=true`, { headers: { authorization: `Bearer ${client.apiKey}` } });
    const ids = [...(await res.text()).matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    expect(ids).toEqual(events.map((e) => e.sequence_number));
  });

  it('responses.stream(...).finalResponse() builds the same Response the server stores', async () => {
    const { client } = await srv().session();
    const stream = client.responses.stream({ model: 'sluice-stub', input: 'helper [stub:tokens=7]', instructions: 'be brief' });
    const deltas: string[] = [];
    stream.on('response.output_text.delta', (e) => deltas.push(e.delta));
    const final = await stream.finalResponse();
    expect(final.status).toBe('completed');
    expect(final.output_text).toBe(deltas.join(''));
    expect(final.instructions).toBe('be brief');
    const stored = await client.responses.retrieve(final.id);
    expect(stored.output_text).toBe(final.output_text);
    expect(stored.usage).toEqual(final.usage);
    // The helper also replays a finished response from 0 and rebuilds it client-side.
    const again = await client.responses.stream({ response_id: final.id }).finalResponse();
    expect(again.output_text).toBe(final.output_text);
    expect(again.status).toBe('completed');
  });

  it('a client that disconnects mid-stream only detaches; retrieve with starting_after gets the rest exactly once', async () => {
    const { client } = await srv().session();
    const stream = await client.responses.create({ model: 'sluice-stub', input: 'resume [stub:tokens=40] [stub:delay=15]', stream: true });
    const first: Ev[] = [];
    for await (const e of stream) {
      first.push(e);
      if (first.length === 10) break; // the SDK aborts the request
    }
    const id = (first[0] as OpenAI.Responses.ResponseCreatedEvent).response.id;
    const lastSeen = first.at(-1)!.sequence_number;
    const rest: Ev[] = [];
    for await (const e of await client.responses.retrieve(id, { stream: true, starting_after: lastSeen })) rest.push(e);
    const all = [...first, ...rest];
    expect(all.map((e) => e.sequence_number)).toEqual(all.map((_, i) => i));
    expect(rest.at(-1)!.type).toBe('response.completed');
    const text = all.filter((e) => e.type === 'response.output_text.delta').map((e) => (e as OpenAI.Responses.ResponseTextDeltaEvent).delta).join('');
    const stored = await client.responses.retrieve(id);
    expect(stored.status).toBe('completed');
    expect(stored.output_text).toBe(text);
    expect(stored.usage!.output_tokens).toBe(40);
    // A cursor past the end replays nothing and closes; no cursor replays it all.
    const none: Ev[] = [];
    for await (const e of await client.responses.retrieve(id, { stream: true, starting_after: all.at(-1)!.sequence_number })) none.push(e);
    expect(none).toEqual([]);
    const whole: Ev[] = [];
    for await (const e of await client.responses.retrieve(id, { stream: true })) whole.push(e);
    expect(whole).toEqual(all);
  });

  it('store: false is ephemeral: never retrievable, and gone (ledger kept) once it ends', async () => {
    const { client, id, token } = await srv().session();
    const r = await client.responses.create({ model: 'sluice-stub', input: 'ephemeral [stub:tokens=3]', store: false });
    expect(r.status).toBe('completed');
    await expect(client.responses.retrieve(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await waitFor(async () => (await srv().api('GET', `/api/runs/${runIdOf(r)}`, token)).status === 404, { what: 'the ephemeral run to be deleted' });
    expect((await srv().ledger({ id, token })).entries.filter((e) => e.runId === runIdOf(r)).length).toBe(2);
    await expect(client.responses.create({ model: 'sluice-stub', input: 'x', store: false, background: true })).rejects.toMatchObject({ status: 400, param: 'store' });
    await expect(client.responses.create({ model: 'sluice-stub', input: 'x', store: false }, { headers: { 'Idempotency-Key': 'k-ephemeral' } })).rejects.toMatchObject({ status: 400, param: 'store' });
  });

  it('store: false and a disconnect cancels the run, charging only what it produced', async () => {
    const { client, id, token } = await srv().session();
    const stream = await client.responses.create({ model: 'sluice-stub', input: 'drop me [stub:tokens=200] [stub:delay=20]', stream: true, store: false });
    let runId = '';
    let deltas = 0;
    for await (const e of stream) {
      if (e.type === 'response.created') runId = runIdOf(e.response);
      if (e.type === 'response.output_text.delta' && ++deltas === 3) break;
    }
    // Cancelled, then deleted: the ledger keeps a debit and a refund of all but the few tokens produced.
    await waitFor(async () => (await srv().api('GET', `/api/runs/${runId}`, token)).status === 404, { what: 'the cancelled ephemeral run to be deleted' });
    const rows = (await srv().ledger({ id, token })).entries.filter((e) => e.runId === runId);
    const debit = -rows.find((e) => e.kind === 'debit')!.amountSats;
    const refund = rows.find((e) => e.kind === 'refund')!.amountSats;
    expect(refund).toBeGreaterThan(0);
    expect(refund).toBeLessThan(debit);
  });
});

describe('managing responses', () => {
  it('cancel stops a live response (charged for its output); cancelling again returns the same final object', async () => {
    const { client, id, token } = await srv().session();
    const r = await client.responses.create({ model: 'sluice-stub', input: 'cancel me [stub:tokens=500] [stub:delay=20]', background: true });
    await waitFor(async () => (await client.responses.retrieve(r.id)).output_text.length > 0, { what: 'some output' });
    const cancelled = await client.responses.cancel(r.id);
    expect(cancelled.status).toBe('cancelled');
    const m = sluiceOf(cancelled);
    expect(m.charged_sats).toBeGreaterThan(0);
    expect(m.charged_sats + m.refunded_sats).toBe(m.debited_sats);
    const again = await client.responses.cancel(r.id);
    expect(again).toEqual(cancelled);
    // Its stream ends with response.incomplete carrying status cancelled.
    const events: Ev[] = [];
    for await (const e of await client.responses.retrieve(r.id, { stream: true })) events.push(e);
    expect(events.at(-1)).toMatchObject({ type: 'response.incomplete', response: { status: 'cancelled' } });
    await srv().ledger({ id, token });
  });

  it('delete forgets a finished response (ledger kept); a live one is a 409; input items are paginated', async () => {
    const { client, id, token } = await srv().session();
    const live = await client.responses.create({ model: 'sluice-stub', input: 'busy [stub:tokens=300] [stub:delay=20]', background: true });
    await expect(client.responses.delete(live.id)).rejects.toBeInstanceOf(OpenAI.ConflictError);
    await client.responses.cancel(live.id);

    const input = [
      { role: 'system' as const, content: 'you are terse' },
      { role: 'user' as const, content: 'one' },
      { role: 'assistant' as const, content: [{ type: 'output_text' as const, text: 'two' }] },
      { role: 'user' as const, content: [{ type: 'input_text' as const, text: 'three [stub:tokens=2]' }] },
    ];
    const r = await client.responses.create({ model: 'sluice-stub', input: input as OpenAI.Responses.ResponseInput });
    const asc: string[] = [];
    for await (const item of client.responses.inputItems.list(r.id, { order: 'asc', limit: 1 })) {
      const msg = item as OpenAI.Responses.ResponseInputMessageItem;
      asc.push(`${msg.role}:${(msg.content[0] as { text: string }).text}`);
    }
    expect(asc).toEqual(['system:you are terse', 'user:one', 'assistant:two', 'user:three [stub:tokens=2]']);
    const desc = await client.responses.inputItems.list(r.id);
    expect(desc.data.map((i) => (i as { id: string }).id)).toEqual(desc.data.map((i) => (i as { id: string }).id).sort().reverse());
    expect(desc.data).toHaveLength(4);

    await client.responses.delete(r.id);
    await expect(client.responses.retrieve(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect((await srv().api('GET', `/api/runs/${runIdOf(r)}`, token)).status).toBe(404);
    expect((await srv().ledger({ id, token })).entries.filter((e) => e.runId === runIdOf(r))).toHaveLength(2);
  });
});
