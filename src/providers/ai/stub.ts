import { setTimeout as sleep } from 'node:timers/promises';
import { countInputTokens, countMessagesTokens } from '../../ledger/pricing.js';
import { AiError, lastUserText, type AiChunk, type AiEvaluation, type AiMessage, type AiProvider, type AiRequest } from './types.js';

/**
 * The default AI provider: a deterministic reply streamed token by token with a real delay, so every path of
 * the server (slow work, failure, cancel, slow readers) can be driven from outside by directives in the text of
 * the last user message (earlier turns of a conversation never steer it):
 *
 * - `[stub:tokens=N]` reply with N tokens (capped by max_tokens, which then ends it `max_tokens`); default `outputTokens`
 * - `[stub:delay=MS]` wait MS between tokens; default `tokenDelayMs`
 * - `[stub:fail]`     fail with `provider_error` after emitting about half the tokens
 * - `[stub:filter]`   stop after about half the tokens with the stop reason `content_filter`
 * - `[stub:echo]`     reply with a transcript of the whole context it was given, one `role: content` line per message
 * - `[stub:reject]`   the job evaluation declines the request
 */
export interface StubAiOptions {
  /** Delay between tokens in ms (default 50). */
  tokenDelayMs?: number;
  /** Tokens in a reply when the text names none (default 24). */
  outputTokens?: number;
}

export interface StubDirectives {
  tokens?: number;
  delayMs?: number;
  fail: boolean;
  reject: boolean;
  filter: boolean;
  echo: boolean;
}

export function parseDirectives(text: string): StubDirectives {
  const num = (name: string) => {
    const m = new RegExp(`\\[stub:${name}=(\\d{1,7})\\]`).exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const has = (name: string) => text.includes(`[stub:${name}]`);
  return { tokens: num('tokens'), delayMs: num('delay'), fail: has('fail'), reject: has('reject'), filter: has('filter'), echo: has('echo') };
}

const WORDS = (
  'sluice gate water flows steady through the channel while the miller counts each measure of grain and ' +
  'the lightning ledger keeps every sat in its place so nothing spills and nothing is lost on the way down'
).split(' ');

/** The reply's i-th token for a given text: deterministic, so tests can compare whole results. */
function stubToken(seed: number, i: number): string {
  const word = WORDS[(seed + i * 7) % WORDS.length]!;
  return i === 0 ? word[0]!.toUpperCase() + word.slice(1) : ` ${word}`;
}

function seedOf(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h % 9973;
}

/** The context as the stub saw it: one `role: content` line per message. */
export function transcript(messages: AiMessage[]): string {
  return messages.map((m) => `${m.role}: ${m.content}`).join('\n');
}

/** Split a text into tokens that join back to it: each word with the whitespace before it. */
const words = (text: string) => text.match(/\s*\S+/g) ?? [];

export function createStubAiProvider(opts: StubAiOptions = {}): AiProvider {
  const defaultDelay = opts.tokenDelayMs ?? 50;
  const defaultTokens = opts.outputTokens ?? 24;

  async function* stream(req: AiRequest, signal: AbortSignal): AsyncGenerator<AiChunk> {
    const text = lastUserText(req.messages);
    const d = parseDirectives(text);
    const seed = seedOf(text);
    const echo = d.echo ? words(transcript(req.messages)) : null;
    const wanted = echo ? echo.length : (d.tokens ?? defaultTokens);
    const total = Math.min(wanted, req.maxTokens);
    const delay = d.delayMs ?? defaultDelay;
    const failAt = d.fail ? Math.floor(total / 2) : -1;
    const filterAt = d.filter ? Math.floor(total / 2) : -1;
    let sent = 0;
    for (let i = 0; i < total; i++) {
      signal.throwIfAborted();
      if (i === failAt) throw new AiError('provider_error', 'the stub provider failed as asked by [stub:fail]');
      if (i === filterAt) break;
      // A zero delay still yields to the event loop, as a network read would.
      await (delay > 0 ? sleep(delay, undefined, { signal }) : new Promise((r) => setImmediate(r)));
      yield { type: 'token', content: echo ? echo[i]! : stubToken(seed, i) };
      sent++;
    }
    if (d.fail) throw new AiError('provider_error', 'the stub provider failed as asked by [stub:fail]');
    yield { type: 'usage', inputTokens: countMessagesTokens(req.messages), outputTokens: sent };
    yield { type: 'finish', reason: d.filter ? 'content_filter' : wanted > req.maxTokens ? 'max_tokens' : 'stop' };
  }

  async function evaluate(request: string, signal: AbortSignal): Promise<AiEvaluation> {
    const d = parseDirectives(request);
    await sleep(Math.min(d.delayMs ?? defaultDelay, 1000), undefined, { signal });
    if (d.reject) return { accept: false, reason: 'the stub provider declines requests marked [stub:reject]' };
    return { accept: true, estimatedInputTokens: countInputTokens(request), estimatedOutputTokens: Math.max(1, d.tokens ?? defaultTokens) };
  }

  return { name: 'stub', stream, evaluate };
}
