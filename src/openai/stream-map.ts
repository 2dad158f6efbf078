import { isTerminalEvent, type RunEvent } from '../runs/registry.js';
import type { RunRow } from '../runs/store.js';
import { outputItemId } from './ids.js';
import { faceData, faceOf, messageItem, outcomeOfEvent, responseObject } from './response-object.js';

/**
 * A Responses stream is a pure function of the run's event log (and of fields fixed at acceptance), so any
 * reader, at any time, in any process, gets the same events with the same `sequence_number`s, and resuming
 * after N is exact. The numbering needs no contiguous seqs (a log may have gaps after a crash) and no lookahead:
 *
 *   0            response.created            (status `queued` for a background response, else `in_progress`)
 *   1            response.in_progress
 *   2            response.output_item.added  (the assistant message, empty)
 *   3            response.content_part.added (its output_text part, empty)
 *   3 + s        response.output_text.delta  for the token event with seq s (s ≥ 1)
 *   3 + F        response.output_text.done   for the final event with seq F (F is above every token's seq)
 *   4 + F        response.content_part.done
 *   5 + F        response.output_item.done
 *   6 + F        response.completed | response.incomplete | response.failed
 *
 * The SSE frame's `id:` is the event's `sequence_number`.
 */
export interface ResponseStreamEvent {
  type: string;
  sequence_number: number;
  [field: string]: unknown;
}

const TOKEN_BASE = 3;
/** How many numbers the final event spans after 3 + F. */
const CLOSING_SPAN = 3;

export function preludeEvents(row: RunRow): ResponseStreamEvent[] {
  const itemId = outputItemId(row.id);
  const created = responseObject(row, { status: faceData(row).background ? 'queued' : 'in_progress' });
  return [
    { type: 'response.created', response: created, sequence_number: 0 },
    { type: 'response.in_progress', response: { ...created, status: 'in_progress' }, sequence_number: 1 },
    { type: 'response.output_item.added', output_index: 0, item: { ...messageItem(row.id, '', 'in_progress'), content: [] }, sequence_number: 2 },
    {
      type: 'response.content_part.added',
      item_id: itemId,
      output_index: 0,
      content_index: 0,
      part: { type: 'output_text', text: '', annotations: [], logprobs: [] },
      sequence_number: 3,
    },
  ];
}

/** The `sequence_number` of a token event's `response.output_text.delta`. */
export const tokenSequence = (e: RunEvent) => TOKEN_BASE + e.seq;

/** The Response events one run event becomes. */
export function responseEventsOf(row: RunRow, e: RunEvent): ResponseStreamEvent[] {
  const item_id = outputItemId(row.id);
  if (e.type === 'token') {
    const delta = (e.data as { content: string }).content;
    return [{ type: 'response.output_text.delta', item_id, output_index: 0, content_index: 0, delta, logprobs: [], sequence_number: TOKEN_BASE + e.seq }];
  }
  if (!isTerminalEvent(e)) return [];
  const outcome = outcomeOfEvent(e, row);
  const face = faceOf(outcome);
  const n = TOKEN_BASE + e.seq;
  const part = { type: 'output_text', text: outcome.result, annotations: [], logprobs: [] };
  return [
    { type: 'response.output_text.done', item_id, output_index: 0, content_index: 0, text: outcome.result, logprobs: [], sequence_number: n },
    { type: 'response.content_part.done', item_id, output_index: 0, content_index: 0, part, sequence_number: n + 1 },
    { type: 'response.output_item.done', output_index: 0, item: messageItem(row.id, outcome.result, face.messageStatus), sequence_number: n + 2 },
    { type: face.event, response: responseObject(row, { outcome }), sequence_number: n + CLOSING_SPAN },
  ];
}

/**
 * Where to start reading the run's log to resume after Response event `after`: early enough that the final
 * event (whose events reach CLOSING_SPAN past its own number) is read again if any of them is still owed.
 * Events at or below `after` are then dropped by number.
 */
export function logCursorFor(after: number): number {
  return Math.max(0, after - TOKEN_BASE - CLOSING_SPAN);
}
