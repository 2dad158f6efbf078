import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { countMessagesTokens } from '../ledger/pricing.js';

/**
 * Counting tokens the way each model's provider will, before it is asked: the debit must cover the input, and a
 * context that cannot fit is refused before any money moves. Two numbers per context, on purpose:
 *
 * - `contextBound` never counts fewer tokens than the provider will (the debit and the context check): exact for
 *   OpenAI's own models, a documented over-estimate where the provider's tokenizer is not public.
 * - `contextEstimate` / `textEstimate` are best guesses, charged only when a provider never reported its usage
 *   (a stream stopped before its usage arrived, a server that sends none). A guess, not a bound: it must not
 *   charge the client for a safety margin.
 *
 * OpenAI's encodings come from `gpt-tokenizer` (pure JS, the fastest BPE on npm); text is counted in segments of
 * at most SEGMENT_CHARS cut before whitespace, because BPE over one long run without spaces (a CJK paragraph,
 * base64, `aaaa…`) is quadratic — 100 000 `a` take 8 s whole and 8 ms in segments. A cut before whitespace
 * matches tiktoken's own pre-split (a space starts the next piece), so prose counts exactly as a whole; a hard
 * cut inside a long run can only add a token, never remove one.
 */
export interface Tokenizer {
  /** What counts, for logs and docs: `o200k_base`, `cl100k_base ×1.75 (estimate)`, `stub`. */
  readonly name: string;
  contextBound(messages: ReadonlyArray<{ role?: string; content: string }>): number;
  contextEstimate(messages: ReadonlyArray<{ role?: string; content: string }>): number;
  textEstimate(text: string): number;
}

export type Encoding = 'o200k_base' | 'cl100k_base';

const SEGMENT_CHARS = 256;
/** Counts of long messages are remembered (by hash): a conversation resends its whole history every turn. */
const CACHE_MIN_CHARS = 1024;
const CACHE_ENTRIES = 2048;

type CountFn = (text: string, opts: { disallowedSpecial: Set<string> }) => number;
const require = createRequire(import.meta.url);
const loaded = new Map<Encoding, CountFn>();

/**
 * An encoding's counter, loaded once per process on first use (200–300 ms and ~40 MB each: only catalogues with
 * a real model pay it, at start-up, never a request). Synchronous, so the catalogue can be built synchronously.
 */
function encoding(name: Encoding): CountFn {
  let fn = loaded.get(name);
  if (!fn) {
    fn = (require(`gpt-tokenizer/cjs/encoding/${name}`) as { countTokens: CountFn }).countTokens;
    loaded.set(name, fn);
  }
  return fn;
}

/** Special-token strings a user typed (`<|endoftext|>`) are ordinary text to the API: count them as such. */
const AS_TEXT = { disallowedSpecial: new Set<string>() };

const isSpace = (c: number) => c === 32 || (c >= 9 && c <= 13) || c === 0xa0 || c === 0x3000 || (c >= 0x2000 && c <= 0x200a);

/** Split a text into pieces of at most `max` chars, cut just before whitespace where one is near, never inside a surrogate pair. */
export function* segments(text: string, max = SEGMENT_CHARS): Generator<string> {
  let i = 0;
  while (i < text.length) {
    let end = Math.min(text.length, i + max);
    if (end < text.length) {
      let j = end;
      while (j > i && !isSpace(text.charCodeAt(j))) j--;
      if (j > i) end = j;
      else if ((text.charCodeAt(end) & 0xfc00) === 0xdc00) end--;
    }
    yield text.slice(i, end);
    i = end;
  }
}

/** A BPE counter over segments, remembering the counts of long texts (bounded, oldest forgotten first). */
export function bpeCounter(name: Encoding): (text: string) => number {
  const count = encoding(name);
  const cache = new Map<string, number>();
  return (text) => {
    if (text.length === 0) return 0;
    const key = text.length >= CACHE_MIN_CHARS ? createHash('sha1').update(text).digest('base64') : null;
    const hit = key !== null ? cache.get(key) : undefined;
    if (hit !== undefined) return hit;
    let n = 0;
    for (const piece of segments(text)) n += count(piece, AS_TEXT);
    if (key !== null) {
      if (cache.size >= CACHE_ENTRIES) cache.delete(cache.keys().next().value!);
      cache.set(key, n);
    }
    return n;
  };
}

/** How a context's raw count becomes a bound, and the best guesses. */
interface Margins {
  /** The bound: raw × factor, plus perMessage for each message, plus fixed. */
  bound: { factor: number; perMessage: number; fixed: number };
  /** The best guesses: the same shape. */
  estimate: { factor: number; perMessage: number; fixed: number };
}

function tokenizer(name: string, count: (text: string) => number, m: Margins): Tokenizer {
  const raw = (messages: ReadonlyArray<{ role?: string; content: string }>) => {
    let n = 0;
    for (const msg of messages) n += count(msg.content);
    return n;
  };
  const apply = (messages: ReadonlyArray<{ role?: string; content: string }>, k: Margins['bound']) =>
    Math.max(1, Math.ceil(raw(messages) * k.factor) + k.perMessage * messages.length + k.fixed);
  return {
    name,
    contextBound: (messages) => apply(messages, m.bound),
    contextEstimate: (messages) => apply(messages, m.estimate),
    textEstimate: (text) => Math.ceil(count(text) * m.estimate.factor),
  };
}

/**
 * OpenAI's chat format costs 3 tokens per message plus its role (1), and 3 to prime the reply (OpenAI's
 * cookbook, "How to count tokens with tiktoken"): exact for OpenAI's own models.
 */
const OPENAI_CHAT = { factor: 1, perMessage: 4, fixed: 3 };

/**
 * Other models behind an OpenAI-compatible server (Llama, Qwen, Mistral, Gemma on vLLM, Ollama, llama.cpp…) use
 * tokenizers of their own and chat templates that add more: counted with cl100k_base, ×1.4 (SentencePiece
 * vocabularies of 32k count up to ~1.35× what cl100k does on English), 8 tokens a message (Llama 3's headers
 * take 5) and 32 more (Llama 3.1's template adds a dated system header of about 25).
 */
const OTHER_MODEL_BOUND = { factor: 1.4, perMessage: 8, fixed: 32 };

/**
 * Claude's tokenizers are not public (Anthropic's own `@anthropic-ai/tokenizer` is for pre-Claude-3 models only and
 * deprecated). Counted with cl100k_base: Claude 3–4.x count about 1.1–1.3× what cl100k does, and Anthropic says
 * the tokenizer of its newest models counts up to 1.35× more than that, so the bound is ×1.75 (+8 a message,
 * +16); the best guess ×1.2. The provider's own count (`message_start`, `message_delta`) is what is charged.
 */
const CLAUDE_BOUND = { factor: 1.75, perMessage: 8, fixed: 16 };
const CLAUDE_GUESS = { factor: 1.2, perMessage: 4, fixed: 4 };

/**
 * The encoding of an OpenAI model by its name, or null when it is not one of OpenAI's: a router's prefix
 * (`openai/gpt-4o`) and a fine-tune's (`ft:gpt-4o-mini:org::id`) are looked through.
 */
export function openAiEncoding(model: string): Encoding | null {
  const name = model.toLowerCase().replace(/^ft:/, '').split('/').pop()!;
  if (/^(gpt-4o|gpt-4\.[1-9]|gpt-5|chatgpt-|o[1-9](-|$)|codex-)/.test(name)) return 'o200k_base';
  if (/^(gpt-4|gpt-3\.5|gpt-35)/.test(name)) return 'cl100k_base';
  return null;
}

/** The tokenizer of a model served over OpenAI's Chat Completions. */
export function openAiCompatibleTokenizer(upstreamModel: string): Tokenizer {
  const enc = openAiEncoding(upstreamModel);
  if (enc) return tokenizer(enc, bpeCounter(enc), { bound: OPENAI_CHAT, estimate: OPENAI_CHAT });
  return tokenizer('cl100k_base ×1.4 (estimate)', bpeCounter('cl100k_base'), { bound: OTHER_MODEL_BOUND, estimate: OPENAI_CHAT });
}

/** The tokenizer of a Claude model (an estimate; see CLAUDE_BOUND). */
export function anthropicTokenizer(): Tokenizer {
  return tokenizer('cl100k_base ×1.75 (estimate)', bpeCounter('cl100k_base'), { bound: CLAUDE_BOUND, estimate: CLAUDE_GUESS });
}

/**
 * The stub's own counting: 4 characters to an input token (per message, at least 1), and one token per word
 * of its reply (each token event is a word with the whitespace before it). It reports exactly these counts, so
 * its estimates are exact.
 */
export const stubTokenizer: Tokenizer = {
  name: 'stub',
  contextBound: countMessagesTokens,
  contextEstimate: countMessagesTokens,
  textEstimate: (text) => text.match(/\S+/g)?.length ?? 0,
};
