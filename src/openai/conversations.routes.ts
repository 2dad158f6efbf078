import { Router } from 'express';
import type { AppContext } from '../context.js';
import { conversationTurns } from '../runs/context.js';
import type { ConversationRow } from '../runs/conversations.js';
import { authenticate } from './auth.js';
import { OpenAiError, notFound } from './errors.js';
import { conversationId, inputItemId, outputItemId, uuidOfConversation } from './ids.js';
import { messageAsItem, page } from './items.js';
import { conversationCreateBody, conversationUpdateBody, listQuery, parseV1, toAiMessage } from './schemas.js';

/**
 * `/v1/conversations`: a thread whose responses carry its history. Its items are the ones it was created with,
 * then each completed response's input and output — exactly the context the next response will see.
 */
export function conversationRoutes(ctx: AppContext): Router {
  const r = Router();
  const view = (c: ConversationRow) => ({ id: conversationId(c.id), object: 'conversation', created_at: Math.floor(c.createdAt.getTime() / 1000), metadata: c.metadata });

  async function own(sessionId: string, id: string): Promise<ConversationRow> {
    const uuid = uuidOfConversation(id);
    const row = uuid ? await ctx.conversations.get(sessionId, uuid) : undefined;
    if (!row) throw notFound(`Conversation with id '${id}' not found.`);
    return row;
  }

  r.post('/conversations', async (req, res) => {
    const { session } = await authenticate(ctx, req);
    const body = parseV1(conversationCreateBody, req.body);
    const row = await ctx.conversations.create(session.id, (body?.items ?? []).map(toAiMessage), body?.metadata ?? {});
    res.json(view(row));
  });

  r.get('/conversations/:id', async (req, res) => {
    const { session } = await authenticate(ctx, req);
    res.json(view(await own(session.id, req.params.id)));
  });

  r.post('/conversations/:id', async (req, res) => {
    const { session } = await authenticate(ctx, req);
    const conv = await own(session.id, req.params.id);
    const body = parseV1(conversationUpdateBody, req.body);
    res.json(view((await ctx.conversations.setMetadata(session.id, conv.id, body.metadata ?? {})) ?? conv));
  });

  r.delete('/conversations/:id', async (req, res) => {
    const { session } = await authenticate(ctx, req);
    const conv = await own(session.id, req.params.id);
    const outcome = await ctx.conversations.delete(session.id, conv.id);
    if (outcome === 'busy') throw new OpenAiError(409, 'A response of this conversation is still active; cancel it or wait for it first.', 'invalid_request_error', 'conversation_busy', 'conversation');
    res.json({ id: req.params.id, object: 'conversation.deleted', deleted: true });
  });

  r.get('/conversations/:id/items', async (req, res) => {
    const { session } = await authenticate(ctx, req);
    const conv = await own(session.id, req.params.id);
    const q = parseV1(listQuery, req.query);
    const items = conv.items.map((m, i) => messageAsItem(inputItemId(conv.id, i), m));
    for (const run of await conversationTurns(ctx.db, conv.id)) {
      (run.turn ?? [{ role: 'user' as const, content: run.request }]).forEach((m, i) => items.push(messageAsItem(inputItemId(run.id, i), m)));
      items.push(messageAsItem(outputItemId(run.id), { role: 'assistant', content: run.result }));
    }
    res.json(page(items, q));
  });

  return r;
}
