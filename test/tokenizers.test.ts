import { performance } from 'node:perf_hooks';
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import { describe, expect, it } from 'vitest';
import { anthropicTokenizer, bpeCounter, openAiCompatibleTokenizer, openAiEncoding, segments, stubTokenizer } from '../src/models/tokenizers.js';

const prose =
  'The sluice keeper opens the gate at dawn; the water runs to the mill, and every measure is counted. ' +
  'Naïve café owners in 東京 and São Paulo agree: 🙂 emoji, tabs\tand\nnewlines   with  spaces count too. ';

describe('tokenizers', () => {
  it('cuts long texts before whitespace, never inside a surrogate pair, and the pieces join back', () => {
    for (const text of [prose.repeat(40), 'a'.repeat(1000), '🙂'.repeat(300), `${'x'.repeat(255)}🙂${'y'.repeat(300)}`]) {
      const pieces = [...segments(text)];
      expect(pieces.join('')).toBe(text);
      for (const p of pieces) {
        expect(p.length).toBeLessThanOrEqual(256);
        expect(p.charCodeAt(0) & 0xfc00).not.toBe(0xdc00);
      }
    }
  });

  it('counts prose in segments exactly as in one piece, and never below it anywhere', () => {
    const count = bpeCounter('o200k_base');
    const whole = (t: string) => o200k(t, { disallowedSpecial: new Set() });
    expect(count(prose.repeat(40))).toBe(whole(prose.repeat(40)));
    const blob = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7919) % 256)).toString('base64');
    expect(count(blob)).toBeGreaterThanOrEqual(whole(blob));
    // A special token typed by a user is text to the API: counted, never thrown on.
    expect(count('<|endoftext|>')).toBe(whole('<|endoftext|>'));
    expect(count('<|endoftext|>')).toBeGreaterThan(1);
  });

  it('stays linear on inputs that make whole-text BPE quadratic (100 000 × "a" takes seconds in one piece)', () => {
    const count = bpeCounter('cl100k_base');
    count('warm up');
    const started = performance.now();
    count('a'.repeat(100_000));
    count('東'.repeat(20_000));
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('chooses the encoding by model name, looking through routers’ and fine-tunes’ prefixes', () => {
    expect(openAiEncoding('gpt-4o-mini')).toBe('o200k_base');
    expect(openAiEncoding('openai/gpt-4.1')).toBe('o200k_base');
    expect(openAiEncoding('ft:gpt-4o-mini-2024-07-18:acme::abc123')).toBe('o200k_base');
    expect(openAiEncoding('gpt-5-nano')).toBe('o200k_base');
    expect(openAiEncoding('o3-mini')).toBe('o200k_base');
    expect(openAiEncoding('gpt-4-turbo')).toBe('cl100k_base');
    expect(openAiEncoding('gpt-3.5-turbo')).toBe('cl100k_base');
    for (const other of ['llama3.1:8b', 'meta-llama/Llama-3.1-8B-Instruct', 'qwen2.5', 'gpt-oss:20b', 'o1x']) expect(openAiEncoding(other)).toBeNull();
  });

  it('bounds above the best guess where the tokenizer is not the provider’s, and is exact where it is', () => {
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: prose },
    ];
    const openai = openAiCompatibleTokenizer('gpt-4o-mini');
    const raw = o200k('Be brief.') + o200k(prose, { disallowedSpecial: new Set() });
    expect(openai.contextBound(messages)).toBe(raw + 2 * 4 + 3);
    expect(openai.contextEstimate(messages)).toBe(openai.contextBound(messages));
    for (const t of [openAiCompatibleTokenizer('llama3.1:8b'), anthropicTokenizer()]) {
      expect(t.contextBound(messages)).toBeGreaterThan(t.contextEstimate(messages));
      expect(t.contextBound(messages)).toBeGreaterThan(raw * 1.4);
    }
    // The stub's reply is counted as it reports it: a word a token.
    expect(stubTokenizer.textEstimate(' Sluice gate water flows')).toBe(4);
    expect(stubTokenizer.contextBound([{ content: 'abcdefgh' }])).toBe(2);
  });
});
