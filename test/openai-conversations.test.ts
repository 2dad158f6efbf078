import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { runIdOf, sluiceOf, useV1Server } from './helpers/openai.js';
import { waitFor } from './helpers/wait.js';

/**
 * Context that carries over — `previous_response_id` and conversations — and one active response per
 * conversation under each `multitask_strategy`, with the SDK against the real server process. `[stub:echo]`
 * makes the stub reply with a transcript of the context it was given, so a test sees exactly what arrived.
 */
const srv = useV1Server();

/** Extra body fields the SDK's types do not know (Sluice's extension). */
const withStrategy = <T>(params: T, multitask_strategy: 'reject' | 'enqueue' | 'interrupt') => ({ ...params, multitask_strategy }) as T;

describe('previous_response_id', () => {
  it('carries the earlier turn (input and output, not its instructions) and bills for it', async () => {
    const { client } = await srv().session();
    // A long first turn, so the context it adds costs whole sats.
    const said = `my name is Ada ${'.'.repeat(2000)} [stub:tokens=4]`;
    const first = await client.responses.create({ model: 'sluice-stub', input: said, instructions: 'SECRET RULES' });
    const echo = await client.responses.create({ model: 'sluice-stub', input: 'what is my name? [stub:echo]', previous_response_id: first.id, instructions: 'new rules' });
    expect(echo.output_text).toBe(['system: new rules', `user: ${said}`, `assistant: ${first.output_text}`, 'user: what is my name? [stub:echo]'].join('\n'));
    expect(echo.output_text).not.toContain('SECRET');
    expect(echo.previous_response_id).toBe(first.id);
    const alone = await client.responses.create({ model: 'sluice-stub', input: 'what is my name? [stub:echo]', instructions: 'new rules' });
    expect(echo.usage!.input_tokens).toBeGreaterThan(alone.usage!.input_tokens);
    expect(sluiceOf(echo).debited_sats).toBeGreaterThan(sluiceOf(alone).debited_sats);
  });

  it('only a completed response can be continued', async () => {
    const { client } = await srv().session();
    const capped = await client.responses.create({ model: 'sluice-stub', input: 'long [stub:tokens=30]', max_output_tokens: 3 });
    expect(capped.status).toBe('incomplete');
    const err = await client.responses.create({ model: 'sluice-stub', input: 'go on', previous_response_id: capped.id }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err).toMatchObject({ code: 'previous_response_not_completed', param: 'previous_response_id' });
    const missing = await client.responses.create({ model: 'sluice-stub', input: 'go on', previous_response_id: 'resp_00000000000000000000000000000000' }).catch((e) => e);
    expect(missing).toMatchObject({ status: 400, code: 'previous_response_not_found' });
  });
});

describe('conversations', () => {
  it('create, retrieve, items, and each turn sees the items and the completed turns before it', async () => {
    const { client } = await srv().session();
    const conv = await client.conversations.create({ items: [{ type: 'message', role: 'user', content: 'remember 42' }], metadata: { topic: 'numbers' } });
    expect(conv).toMatchObject({ object: 'conversation', metadata: { topic: 'numbers' } });
    expect(conv.id).toMatch(/^conv_[0-9a-f]{32}$/);
    expect(await client.conversations.retrieve(conv.id)).toEqual(conv);
    const one = await client.responses.create({ model: 'sluice-stub', input: 'turn one [stub:tokens=3]', conversation: conv.id });
    expect(one.conversation).toEqual({ id: conv.id });
    const two = await client.responses.create({ model: 'sluice-stub', input: 'turn two [stub:echo]', conversation: { id: conv.id }, instructions: 'only now' });
    expect(two.output_text).toBe(['system: only now', 'user: remember 42', 'user: turn one [stub:tokens=3]', `assistant: ${one.output_text}`, 'user: turn two [stub:echo]'].join('\n'));
    const items: string[] = [];
    for await (const item of client.conversations.items.list(conv.id, { order: 'asc', limit: 2 })) {
      const m = item as OpenAI.Conversations.Message;
      items.push(`${m.role}: ${(m.content[0] as { text: string }).text}`);
    }
    expect(items).toEqual(['user: remember 42', 'user: turn one [stub:tokens=3]', `assistant: ${one.output_text}`, 'user: turn two [stub:echo]', `assistant: ${two.output_text}`]);
    const updated = await client.conversations.update(conv.id, { metadata: { topic: 'changed' } });
    expect(updated.metadata).toEqual({ topic: 'changed' });
  });

  it('reject (the default): a second request while one is active is 409 conversation_busy', async () => {
    const { client } = await srv().session();
    const conv = await client.conversations.create();
    const active = await client.responses.create({ model: 'sluice-stub', input: 'busy [stub:tokens=300] [stub:delay=20]', conversation: conv.id, background: true });
    const err = await client.responses.create({ model: 'sluice-stub', input: 'me too', conversation: conv.id }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.ConflictError);
    expect(err).toMatchObject({ code: 'conversation_busy', param: 'conversation' });
    // Deleting a busy conversation is refused the same way; once idle it goes.
    await expect(client.conversations.delete(conv.id)).rejects.toMatchObject({ status: 409, code: 'conversation_busy' });
    await client.responses.cancel(active.id);
    expect(await client.conversations.delete(conv.id)).toEqual({ id: conv.id, object: 'conversation.deleted', deleted: true });
    await expect(client.conversations.retrieve(conv.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    // The response outlives its conversation.
    expect((await client.responses.retrieve(active.id)).conversation).toEqual({ id: conv.id });
  });

  it('enqueue: accepted at once, starts when the active one completes, and sees its output', async () => {
    const { client, token } = await srv().session();
    const conv = await client.conversations.create();
    const first = await client.responses.create({ model: 'sluice-stub', input: 'first [stub:tokens=15] [stub:delay=15]', conversation: conv.id, background: true });
    const second = await client.responses.create(withStrategy({ model: 'sluice-stub', input: 'second [stub:echo]', conversation: conv.id, background: true }, 'enqueue'));
    expect(second.status).toBe('queued');
    const third = await client.responses.create(withStrategy({ model: 'sluice-stub', input: 'third [stub:echo]', conversation: conv.id }, 'enqueue'));
    const one = await client.responses.retrieve(first.id);
    const two = await client.responses.retrieve(second.id);
    expect([one.status, two.status, third.status]).toEqual(['completed', 'completed', 'completed']);
    expect(two.output_text).toBe(['user: first [stub:tokens=15] [stub:delay=15]', `assistant: ${one.output_text}`, 'user: second [stub:echo]'].join('\n'));
    expect(third.output_text.startsWith(`${two.output_text.split('\n').slice(0, 3).join('\n')}\nassistant: user: first`)).toBe(true);
    // Started only after the one before it had ended.
    const runA = (await srv().api('GET', `/api/runs/${runIdOf(one)}`, token)).body;
    const runB = (await srv().api('GET', `/api/runs/${runIdOf(two)}`, token)).body;
    expect(new Date(runB.startedAt).getTime()).toBeGreaterThanOrEqual(new Date(runA.completedAt).getTime());
    // Its debit covered the context it could not yet know.
    expect(sluiceOf(two).charged_sats).toBeLessThanOrEqual(sluiceOf(two).debited_sats);
  });

  it('an enqueued response can be cancelled while it waits: refunded in full, and the queue moves on', async () => {
    const { client, id, token } = await srv().session();
    const conv = await client.conversations.create();
    const active = await client.responses.create({ model: 'sluice-stub', input: 'active [stub:tokens=20] [stub:delay=15]', conversation: conv.id, background: true });
    const waiting = await client.responses.create(withStrategy({ model: 'sluice-stub', input: 'waiting', conversation: conv.id, background: true }, 'enqueue'));
    const after = await client.responses.create(withStrategy({ model: 'sluice-stub', input: 'after [stub:echo]', conversation: conv.id, background: true }, 'enqueue'));
    const cancelled = await client.responses.cancel(waiting.id);
    expect(cancelled.status).toBe('cancelled');
    expect(sluiceOf(cancelled).refunded_sats).toBe(sluiceOf(cancelled).debited_sats);
    const last = await waitFor(async () => {
      const r = await client.responses.retrieve(after.id);
      return r.status === 'completed' ? r : null;
    }, { what: 'the last turn' });
    const one = await client.responses.retrieve(active.id);
    expect(last.output_text).toBe(`user: active [stub:tokens=20] [stub:delay=15]\nassistant: ${one.output_text}\nuser: after [stub:echo]`);
    await srv().ledger({ id, token });
  });

  it('interrupt: stops the active one (charged for what it produced), then runs', async () => {
    const { client, id, token } = await srv().session();
    const conv = await client.conversations.create();
    const slow = await client.responses.create({ model: 'sluice-stub', input: 'slow [stub:tokens=500] [stub:delay=20]', conversation: conv.id, background: true });
    await waitFor(async () => (await client.responses.retrieve(slow.id)).output_text.length > 0, { what: 'some output' });
    const next = await client.responses.create(withStrategy({ model: 'sluice-stub', input: 'instead [stub:echo]', conversation: conv.id }, 'interrupt'));
    expect(next.status).toBe('completed');
    const stopped = await client.responses.retrieve(slow.id);
    expect(stopped.status).toBe('cancelled');
    expect(sluiceOf(stopped).charged_sats).toBeGreaterThan(0);
    expect(sluiceOf(stopped).refunded_sats).toBeGreaterThan(0);
    // The interrupted turn never completed, so it is not part of the context.
    expect(next.output_text).toBe('user: instead [stub:echo]');
    await srv().ledger({ id, token });
  });

  it('a conversation of another session, or a malformed id, is not found', async () => {
    const a = await srv().session();
    const b = await srv().session();
    const conv = await a.client.conversations.create();
    await expect(b.client.conversations.retrieve(conv.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const err = await b.client.responses.create({ model: 'sluice-stub', input: 'x', conversation: conv.id }).catch((e) => e);
    expect(err).toMatchObject({ status: 404, param: 'conversation' });
    await expect(a.client.conversations.retrieve('conv_nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});
