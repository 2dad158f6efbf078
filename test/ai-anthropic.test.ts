import { describe } from 'vitest';
import { inputTokens, startFakeAnthropic } from './fakes/anthropic-messages.js';
import { providerSuite } from './helpers/ai-suite.js';

describe('anthropic against a fake Anthropic Messages API', () => {
  providerSuite({
    provider: 'anthropic',
    upstreamModel: 'claude-haiku-4-5',
    start: (apiKey) => startFakeAnthropic({ apiKey }),
    baseURL: (fake) => fake.url,
    lastUsage: (fake) => {
      const u = fake.usages.at(-1)!;
      return { inputTokens: u.input_tokens!, outputTokens: u.output_tokens! };
    },
    upFrontInput: (req) => inputTokens(req.body),
    keyOnWire: (req) => String(req.headers['x-api-key'] ?? /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1]),
  });
});
