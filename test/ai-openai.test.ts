import { describe } from 'vitest';
import { startFakeOpenAi } from './fakes/openai-chat.js';
import { providerSuite } from './helpers/ai-suite.js';

describe('openai-compatible against a fake OpenAI Chat Completions server', () => {
  providerSuite({
    provider: 'openai-compatible',
    upstreamModel: 'gpt-4o-mini',
    start: (apiKey) => startFakeOpenAi({ apiKey }),
    baseURL: (fake) => `${fake.url}/v1`,
    lastUsage: (fake) => {
      const u = fake.usages.at(-1)!;
      return { inputTokens: u.prompt_tokens!, outputTokens: u.completion_tokens! };
    },
    upFrontInput: () => null,
    keyOnWire: (req) => /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1],
  });
});
