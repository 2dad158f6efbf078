import type { z } from 'zod';
import type { ChatCompletion as SdkChatCompletion, ChatCompletionChunk as SdkChunk } from 'openai/resources/chat/completions';
import type { ConversationDeletedResource, Conversation as SdkConversation } from 'openai/resources/conversations/conversations';
import type { Model as SdkModel } from 'openai/resources/models';
import type { ResponseItem, Response as SdkResponse, ResponseStreamEvent } from 'openai/resources/responses/responses';
import type * as S from '../src/openai/object-schemas.js';

/**
 * The objects the /v1 face answers with, against the `openai` SDK's own types, checked by `npm test`'s type-check
 * (this file holds no test to run). The contract test (test/openapi-contract.test.ts) proves every real answer
 * parses with these schemas and has no field they do not list; here the schemas must fit the SDK's types — every
 * field the SDK requires present, of its type, literals among its literals — so an answer cannot drift from
 * what the SDK declares without failing one or the other.
 *
 * Two nulls are kept deliberately where the SDK declares an optional field, because OpenAI's API sends them and
 * the SDK reads them: `usage: null` on a response not yet ended, and `system_fingerprint: null` on chat objects.
 */
type Fits<A extends B, B> = A;
type OrNull<T, K extends keyof T> = Omit<T, K> & { [P in K]?: T[P] | null };
type FrameData<F> = F extends { data: infer D } ? D : never;
/** A Response as it travels: `output_text` is the SDK's own convenience, added by it after parsing. */
type WireResponse = OrNull<Omit<SdkResponse, 'output_text'>, 'usage'>;
type WireEvent<E> = E extends { response: SdkResponse } ? Omit<E, 'response'> & { response: WireResponse } : E;

export type SdkShapes = [
  Fits<z.infer<typeof S.ResponseObject>, WireResponse>,
  Fits<z.infer<typeof S.ResponseDeleted>, { id: string; object: 'response'; deleted: true }>,
  Fits<z.infer<typeof S.ChatCompletion>, OrNull<SdkChatCompletion, 'system_fingerprint'>>,
  Fits<z.infer<typeof S.ChatCompletionChunk>, OrNull<SdkChunk, 'system_fingerprint'>>,
  Fits<z.infer<typeof S.Conversation>, SdkConversation>,
  Fits<z.infer<typeof S.ConversationDeleted>, ConversationDeletedResource>,
  Fits<z.infer<typeof S.Model>, SdkModel>,
  Fits<z.infer<typeof S.MessageItem>, ResponseItem>,
  Fits<FrameData<z.infer<typeof S.ResponseStreamFrames>>, WireEvent<ResponseStreamEvent>>,
];
