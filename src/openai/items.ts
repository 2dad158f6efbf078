import type { z } from 'zod';
import type { AiMessage } from '../providers/ai/types.js';
import { invalidRequest } from './errors.js';
import type { listQuery } from './schemas.js';

/** A message as a stored item (`input_items`, conversation items): input text, or an assistant's output text. */
export function messageAsItem(id: string, m: AiMessage) {
  const assistant = m.role === 'assistant';
  return {
    id,
    type: 'message',
    role: m.role,
    status: 'completed',
    content: [assistant ? { type: 'output_text', text: m.content, annotations: [], logprobs: [] } : { type: 'input_text', text: m.content }],
  };
}

/**
 * One page of a list the SDK's cursor pages walk (`after` = the last id of the previous page, `has_more`),
 * in the order asked for. An `after` that names no item of the list is a 400, not an empty page.
 */
export function page<T extends { id: string }>(all: T[], q: z.infer<typeof listQuery>) {
  const ordered = q.order === 'desc' ? all.slice().reverse() : all;
  let start = 0;
  if (q.after !== undefined) {
    const i = ordered.findIndex((item) => item.id === q.after);
    if (i < 0) throw invalidRequest(`Invalid value for 'after': no item ${JSON.stringify(q.after)} in this list.`, 'after');
    start = i + 1;
  }
  const data = ordered.slice(start, start + q.limit);
  return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: start + data.length < ordered.length };
}
