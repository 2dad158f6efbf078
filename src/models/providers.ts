import { pino, type Logger } from 'pino';
import { ConfigError, type Config } from '../config.js';
import { createAnthropicProvider } from '../providers/ai/anthropic.js';
import { createOpenAiCompatibleProvider } from '../providers/ai/openai-compatible.js';
import { withResilience } from '../providers/ai/resilient.js';
import { createStubAiProvider } from '../providers/ai/stub.js';
import type { AiEvaluation, AiProvider } from '../providers/ai/types.js';
import { loadCatalogue, type Catalogue, type ModelEntry } from './catalogue.js';
import { anthropicTokenizer, openAiCompatibleTokenizer, stubTokenizer, type Tokenizer } from './tokenizers.js';

export interface ProviderDeps {
  config: Config;
  /** Where keys are read from (the variable each entry's `apiKeyEnv` names). */
  env: Record<string, string | undefined>;
  log: Logger;
  tokenizer: Tokenizer;
}

/** One kind of provider a catalogue entry can name. */
export interface ProviderKind {
  /** Whether an entry must name the variable holding its key. */
  needsKey: boolean;
  /** How its models' tokens are counted before they are asked (the debit and the context check). */
  tokenizer(model: ModelEntry): Tokenizer;
  create(model: ModelEntry, deps: ProviderDeps): AiProvider;
}

/**
 * Every provider this server has, by the name a catalogue entry gives in `provider`: the catalogue accepts
 * exactly these names. Real providers are wrapped once in the resilience layer (retries before the first token,
 * timeouts), and evaluate jobs locally (see `localEvaluation`).
 */
export const providerFactories: Record<string, ProviderKind> = {
  stub: {
    needsKey: false,
    tokenizer: () => stubTokenizer,
    create: (_model, { config }) => createStubAiProvider({ tokenDelayMs: config.STUB_TOKEN_DELAY_MS, outputTokens: config.STUB_OUTPUT_TOKENS }),
  },
  'openai-compatible': {
    needsKey: false,
    tokenizer: (model) => openAiCompatibleTokenizer(model.upstreamModel),
    create: (model, deps) =>
      real(model, deps, createOpenAiCompatibleProvider({ baseURL: model.baseURL ?? 'https://api.openai.com/v1', apiKey: keyOf(model, deps.env), headersTimeoutMs: firstTokenMs(model, deps.config) + 5_000 })),
  },
  anthropic: {
    needsKey: true,
    tokenizer: () => anthropicTokenizer(),
    create: (model, deps) =>
      real(model, deps, createAnthropicProvider({ baseURL: model.baseURL, apiKey: keyOf(model, deps.env)!, headersTimeoutMs: firstTokenMs(model, deps.config) + 5_000 })),
  },
};

const firstTokenMs = (model: ModelEntry, config: Config) => model.firstTokenTimeoutMs ?? config.AI_FIRST_TOKEN_TIMEOUT_MS;
const keyOf = (model: ModelEntry, env: ProviderDeps['env']) => (model.apiKeyEnv ? env[model.apiKeyEnv] || null : null);

function real(model: ModelEntry, deps: ProviderDeps, p: Pick<AiProvider, 'name' | 'stream'>): AiProvider {
  return withResilience(
    { ...p, evaluate: localEvaluation(model, deps) },
    {
      firstTokenTimeoutMs: firstTokenMs(model, deps.config),
      idleTimeoutMs: model.idleTimeoutMs ?? deps.config.AI_IDLE_TIMEOUT_MS,
      maxRetries: deps.config.AI_MAX_RETRIES,
      retryBaseMs: deps.config.AI_RETRY_BASE_MS,
      log: deps.log,
      model: model.name,
    },
  );
}

/**
 * A job's evaluation on a real model is local, instant and free: no model call (one would cost the operator
 * money for a guess about the reply's length that a model cannot make reliably). It accepts any request whose
 * input fits the model's context, quotes its input as the tokenizer bounds it, and reserves DEFAULT_MAX_TOKENS
 * of reply (within the model's maxOutputTokens) — which also becomes the run's max_tokens. The work invoice pays
 * for that; what the reply does not use is refunded.
 */
function localEvaluation(model: ModelEntry, deps: ProviderDeps): AiProvider['evaluate'] {
  return async (request, signal): Promise<AiEvaluation> => {
    signal.throwIfAborted();
    const input = deps.tokenizer.contextBound([{ role: 'user', content: request }]);
    const output = Math.min(deps.config.DEFAULT_MAX_TOKENS, model.maxOutputTokens);
    if (input + output > model.contextTokens) {
      return { accept: false, reason: `the request (about ${input} tokens) and its reply (${output}) exceed the ${model.contextTokens}-token context of ${model.name}` };
    }
    return { accept: true, estimatedInputTokens: input, estimatedOutputTokens: output };
  };
}

/**
 * What the catalogue needs from the environment, every problem named (never a key's value): each `apiKeyEnv`
 * must be set, and a provider that needs a key must name one. Checked at start-up, before anything starts.
 */
export function checkProviderKeys(catalogue: Catalogue, env: ProviderDeps['env']): void {
  const problems: string[] = [];
  catalogue.models.forEach((m, i) => {
    const kind = providerFactories[m.provider];
    if (kind?.needsKey && !m.apiKeyEnv) problems.push(`models[${i}].apiKeyEnv: the ${m.provider} provider needs a key: name the variable that holds it`);
    if (m.apiKeyEnv && !env[m.apiKeyEnv]) problems.push(`models[${i}].apiKeyEnv: the variable ${m.apiKeyEnv} is not set (model ${m.name})`);
  });
  if (problems.length) throw new ConfigError(problems);
}

/** A model the server sells, with the provider that runs it and the tokenizer that counts for it. */
export interface ResolvedModel {
  entry: ModelEntry;
  provider: AiProvider;
  tokenizer: Tokenizer;
}

/**
 * The catalogue with one provider per model, built once at start-up. `override` (tests) runs every model with
 * the same provider; `wrap` decorates every provider (metrics count what passes through).
 */
export function createModels(
  config: Config,
  opts: { catalogue?: Catalogue; override?: AiProvider; wrap?: (provider: AiProvider) => AiProvider; env?: ProviderDeps['env']; log?: Logger } = {},
) {
  const catalogue = opts.catalogue ?? loadCatalogue(config, Object.keys(providerFactories));
  const env = opts.env ?? process.env;
  const log = opts.log ?? pino({ level: 'silent' });
  if (!opts.override) checkProviderKeys(catalogue, env);
  const wrap = opts.wrap ?? ((p: AiProvider) => p);
  // One override is shared by every model (tests), so it is wrapped once.
  const override = opts.override && wrap(opts.override);
  const resolved = new Map<string, ResolvedModel>(
    catalogue.models.map((entry) => {
      const kind = providerFactories[entry.provider]!;
      const tokenizer = kind.tokenizer(entry);
      return [entry.name, { entry, tokenizer, provider: override ?? wrap(kind.create(entry, { config, env, log, tokenizer })) }];
    }),
  );
  return {
    catalogue,
    /** The model used when a request names none (and by jobs). */
    get default(): ResolvedModel {
      return resolved.get(catalogue.default.name)!;
    },
    /** A model by name; undefined when the catalogue has no such model. */
    get(name: string): ResolvedModel | undefined {
      return resolved.get(name);
    },
    /** How a model's tokens are counted: a run's model, or the default one for a run that names none (or a model since removed). */
    tokenizer(name: string | null): Tokenizer {
      return (name !== null ? resolved.get(name) : undefined)?.tokenizer ?? resolved.get(catalogue.default.name)!.tokenizer;
    },
    list(): ModelEntry[] {
      return catalogue.models;
    },
  };
}

export type Models = ReturnType<typeof createModels>;
