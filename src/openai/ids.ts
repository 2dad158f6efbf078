/**
 * OpenAI-style ids for Sluice's rows: a prefix and the row's uuid without dashes, so an id maps to exactly one
 * row and back without a lookup table (`resp_…` is a run, `conv_…` a conversation).
 */
const hex = (uuid: string) => uuid.replaceAll('-', '');
const uuidOf = (h: string) => `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;

function decoder(prefix: string) {
  const re = new RegExp(`^${prefix}([0-9a-f]{32})$`);
  return (id: unknown): string | undefined => {
    const m = typeof id === 'string' ? re.exec(id) : null;
    return m ? uuidOf(m[1]!) : undefined;
  };
}

export const responseId = (runId: string) => `resp_${hex(runId)}`;
export const runIdOfResponse = decoder('resp_');

export const conversationId = (id: string) => `conv_${hex(id)}`;
export const uuidOfConversation = decoder('conv_');

export const chatCompletionId = (runId: string) => `chatcmpl-${hex(runId)}`;

/** The assistant message a run produced. */
export const outputItemId = (runId: string) => `msg_${hex(runId)}`;
/** The i-th message of a run's own input (or of a conversation's initial items). */
export const inputItemId = (ownerId: string, i: number) => `msg_${hex(ownerId)}_${i}`;
