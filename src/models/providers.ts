import type { Config } from '../config.js';
import { createStubAiProvider } from '../providers/ai/stub.js';
import type { AiProvider } from '../providers/ai/types.js';
import { loadCatalogue, type Catalogue, type ModelEntry } from './catalogue.js';

/** Builds the provider that runs one catalogue entry. */
export type ProviderFactory = (model: ModelEntry, deps: { config: Config }) => AiProvider;

/**
 * Every provider this server has, by the name a catalogue entry gives in `provider`. Adding one (e.g.
 * `openai-compatible`, `anthropic`) is an entry here: the catalogue accepts exactly these names.
 */
export const providerFactories: Record<string, ProviderFactory> = {
  stub: (_model, { config }) => createStubAiProvider({ tokenDelayMs: config.STUB_TOKEN_DELAY_MS, outputTokens: config.STUB_OUTPUT_TOKENS }),
};

/** A model the server sells, with the provider that runs it. */
export interface ResolvedModel {
  entry: ModelEntry;
  provider: AiProvider;
}

/**
 * The catalogue with one provider per model, built once at start-up. `override` (tests) runs every model with
 * the same provider; `wrap` decorates every provider (metrics count what passes through).
 */
export function createModels(config: Config, opts: { catalogue?: Catalogue; override?: AiProvider; wrap?: (provider: AiProvider) => AiProvider } = {}) {
  const catalogue = opts.catalogue ?? loadCatalogue(config, Object.keys(providerFactories));
  const wrap = opts.wrap ?? ((p: AiProvider) => p);
  // One override is shared by every model (tests), so it is wrapped once.
  const override = opts.override && wrap(opts.override);
  const resolved = new Map<string, ResolvedModel>(
    catalogue.models.map((entry) => [entry.name, { entry, provider: override ?? wrap(providerFactories[entry.provider]!(entry, { config })) }]),
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
    list(): ModelEntry[] {
      return catalogue.models;
    },
  };
}

export type Models = ReturnType<typeof createModels>;
