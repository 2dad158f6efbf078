import type { RunEntry, RunEvent } from '../runs/registry.js';
import type { RunRow } from '../runs/store.js';
import { outputItemId, responseId } from './ids.js';

/**
 * The OpenAI Response object of a run, in the shape of the `openai` SDK's `Response` (6.x). Everything but the
 * outcome comes from fields of the run fixed at acceptance, and the outcome comes from the run's final event
 * (or, equivalently, its finished row), so the object a stream ends with and the one `GET` returns are the same.
 */

/** What the /v1 face keeps with a run it accepted (`runs.face_data`). */
export interface ResponseFaceData {
  background: boolean;
  store: boolean;
  metadata: Record<string, string>;
  /** `conv_…`, kept here because the run's link is cleared if the conversation is deleted. */
  conversation: string | null;
  multitaskStrategy?: string;
}

/** A finished run's outcome, from its final event or its row. */
export interface Outcome {
  state: 'complete' | 'cancelled' | 'interrupted' | 'failed';
  stopReason: string | null;
  result: string;
  usage: { inputTokens: number; outputTokens: number };
  error: { code: string; message: string } | null;
  debitedSats: number;
  chargedSats: number;
  refundedSats: number;
  completedAt: string | null;
}

/** The outcome a final event (`done` or `error`) describes; fields an old or synthetic event lacks default. */
export function outcomeOfEvent(e: RunEvent, row: RunRow): Outcome {
  const d = e.data as Partial<Outcome> & { code?: string; message?: string };
  const failed = e.type === 'error';
  return {
    state: failed ? 'failed' : (d.state ?? 'complete'),
    stopReason: d.stopReason ?? null,
    result: d.result ?? '',
    usage: d.usage ?? { inputTokens: 0, outputTokens: 0 },
    error: failed ? { code: d.code ?? 'failed', message: d.message ?? 'the response failed' } : null,
    debitedSats: d.debitedSats ?? row.debitedSats,
    chargedSats: d.chargedSats ?? 0,
    refundedSats: d.refundedSats ?? 0,
    completedAt: d.completedAt ?? null,
  };
}

export function outcomeOfRow(row: RunRow): Outcome {
  return {
    state: row.state as Outcome['state'],
    stopReason: row.stopReason,
    result: row.result,
    usage: { inputTokens: row.inputTokens, outputTokens: row.outputTokens },
    error: row.error ?? null,
    debitedSats: row.debitedSats,
    chargedSats: row.chargedSats,
    refundedSats: row.refundedSats,
    completedAt: row.completedAt?.toISOString() ?? null,
  };
}

/** How an outcome shows on this face: status, the terminal stream event, and the output message's status. */
export function faceOf(o: Outcome) {
  if (o.state === 'complete') {
    if (o.stopReason === 'max_tokens' || o.stopReason === 'content_filter') {
      const reason = o.stopReason === 'max_tokens' ? 'max_output_tokens' : 'content_filter';
      return { status: 'incomplete', event: 'response.incomplete', messageStatus: 'incomplete', incomplete: { reason }, error: null };
    }
    return { status: 'completed', event: 'response.completed', messageStatus: 'completed', incomplete: null, error: null };
  }
  // A cancelled response ends the stream with `response.incomplete` carrying status `cancelled`: it stopped
  // before it was done, with the output it had (the SDK has no `response.cancelled` stream event).
  if (o.state === 'cancelled') return { status: 'cancelled', event: 'response.incomplete', messageStatus: 'incomplete', incomplete: null, error: null };
  const error =
    o.state === 'interrupted'
      ? { code: 'server_error', message: 'the response was interrupted (server restart or shutdown) and refunded in full' }
      : { code: o.error?.code === 'provider_rate_limited' ? 'rate_limit_exceeded' : 'server_error', message: o.error?.message ?? 'the response failed' };
  return { status: 'failed', event: 'response.failed', messageStatus: 'incomplete', incomplete: null, error };
}

const seconds = (d: Date | string) => Math.floor(new Date(d).getTime() / 1000);

export const faceData = (row: RunRow) => (row.faceData ?? {}) as Partial<ResponseFaceData>;

/** The assistant message of a run (the one output item), with its text so far. */
export function messageItem(runId: string, text: string, status: string) {
  return {
    id: outputItemId(runId),
    type: 'message',
    role: 'assistant',
    status,
    content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
  };
}

/** The parts of the object fixed at acceptance, with the given progress. */
export function responseObject(row: RunRow, progress: { status: 'queued' | 'in_progress'; text?: string } | { outcome: Outcome }) {
  const fd = faceData(row);
  const base = {
    id: responseId(row.id),
    object: 'response',
    created_at: seconds(row.createdAt),
    model: row.model,
    instructions: row.instructions,
    max_output_tokens: row.maxTokens,
    metadata: fd.metadata ?? {},
    previous_response_id: row.previousRunId ? responseId(row.previousRunId) : null,
    conversation: fd.conversation ? { id: fd.conversation } : null,
    background: fd.background ?? false,
    store: fd.store ?? true,
    parallel_tool_calls: false,
    temperature: null,
    top_p: null,
    tool_choice: 'none',
    tools: [],
    text: { format: { type: 'text' } },
    truncation: 'disabled',
    reasoning: null,
  };
  if (!('outcome' in progress)) {
    const output = progress.text === undefined ? [] : [messageItem(row.id, progress.text, 'in_progress')];
    return {
      ...base,
      status: progress.status,
      completed_at: null,
      error: null,
      incomplete_details: null,
      output,
      usage: null,
      sluice: { run_id: row.id, debited_sats: row.debitedSats, charged_sats: null, refunded_sats: null, ...(fd.multitaskStrategy ? { multitask_strategy: fd.multitaskStrategy } : {}) },
    };
  }
  const o = progress.outcome;
  const f = faceOf(o);
  return {
    ...base,
    status: f.status,
    completed_at: o.completedAt ? seconds(o.completedAt) : null,
    error: f.error,
    incomplete_details: f.incomplete,
    output: [messageItem(row.id, o.result, f.messageStatus)],
    usage: {
      input_tokens: o.usage.inputTokens,
      input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
      output_tokens: o.usage.outputTokens,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: o.usage.inputTokens + o.usage.outputTokens,
    },
    sluice: {
      run_id: row.id,
      debited_sats: o.debitedSats,
      charged_sats: o.chargedSats,
      refunded_sats: o.refundedSats,
      ...(fd.multitaskStrategy ? { multitask_strategy: fd.multitaskStrategy } : {}),
      ...(o.error ? { error_code: o.error.code } : {}),
    },
  };
}

/** The object as it is now: from memory while the run is live here, else from its row. */
export function currentResponse(row: RunRow, live?: RunEntry) {
  const state = live && !live.ended ? live.state : row.state;
  if (state === 'queued') return responseObject(row, { status: 'queued' });
  if (state === 'executing') return responseObject(row, { status: 'in_progress', text: live && !live.ended ? live.result : row.result });
  return responseObject(row, { outcome: outcomeOfRow(row) });
}

export type ResponseObject = ReturnType<typeof responseObject>;
