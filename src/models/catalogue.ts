import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError, type Config } from '../config.js';

/**
 * The model catalogue: which models this server sells, who runs each, and at what price. From `MODELS_FILE` (a
 * path) or `MODELS` (the same JSON inline), validated at start-up with every mistake named; with neither, the
 * stub alone, priced from the PRICE_* variables. Its shape is a public contract (operators and tools rely on it):
 *
 *   {"default": "gpt-4o-mini",
 *    "models": [{"name": "gpt-4o-mini", "provider": "openai-compatible", "baseURL": "https://api.openai.com/v1",
 *                "apiKeyEnv": "OPENAI_API_KEY", "upstreamModel": "gpt-4o-mini", "inputSatsPer1k": 10,
 *                "outputSatsPer1k": 40, "maxOutputTokens": 4096, "contextTokens": 128000}]}
 */
export interface ModelEntry {
  /** What clients ask for (`model`), unique in the catalogue. */
  name: string;
  /** Which provider factory runs it (see `src/models/providers.ts`). */
  provider: string;
  baseURL?: string;
  /** The environment variable holding the provider's key (the key itself is never in the catalogue). */
  apiKeyEnv?: string;
  /** The model's name at its provider (default: `name`). */
  upstreamModel: string;
  inputSatsPer1k: number;
  outputSatsPer1k: number;
  maxOutputTokens: number;
  contextTokens: number;
  /** Real providers: this model's first-token and between-token timeouts (default AI_FIRST_TOKEN_TIMEOUT_MS, AI_IDLE_TIMEOUT_MS). */
  firstTokenTimeoutMs?: number;
  idleTimeoutMs?: number;
}

export interface Catalogue {
  default: ModelEntry;
  models: ModelEntry[];
  get(name: string): ModelEntry | undefined;
  /** When it was loaded (unix seconds): the `created` of `GET /v1/models`. */
  loadedAt: number;
}

/** The stub's name in the catalogue when none is configured. */
export const STUB_MODEL = 'sluice-stub';
/** The stub's context window: large, so only real limits (request size, balance) bound a conversation. */
const STUB_CONTEXT_TOKENS = 131_072;

const positiveInt = (what: string) => z.number({ error: `${what} must be a number` }).int(`${what} must be a whole number`).min(1, `${what} must be at least 1`);
const price = (what: string) => z.number({ error: `${what} must be a number of sats` }).min(0, `${what} must not be negative`).max(1_000_000, `${what} is implausibly high`);

const modelSchema = z
  .object({
    name: z.string({ error: 'name is required' }).min(1, 'name must not be empty').max(200).regex(/^[\w.:/@+-]+$/, 'name may hold letters, digits and . : / @ + - _ only'),
    provider: z.string({ error: 'provider is required' }),
    // Only http(s): a bare `localhost:11434/v1` parses as a URL of scheme `localhost:`, and would fail every request.
    baseURL: z.url({ protocol: /^https?$/i, error: 'baseURL must be an http(s) URL' }).optional(),
    apiKeyEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'apiKeyEnv must be the name of an environment variable').optional(),
    upstreamModel: z.string().min(1, 'upstreamModel must not be empty').optional(),
    inputSatsPer1k: price('inputSatsPer1k'),
    outputSatsPer1k: price('outputSatsPer1k'),
    maxOutputTokens: positiveInt('maxOutputTokens'),
    contextTokens: positiveInt('contextTokens'),
    firstTokenTimeoutMs: positiveInt('firstTokenTimeoutMs').max(3_600_000, 'firstTokenTimeoutMs must be at most an hour').optional(),
    idleTimeoutMs: positiveInt('idleTimeoutMs').max(3_600_000, 'idleTimeoutMs must be at most an hour').optional(),
  })
  .strict();

const catalogueSchema = z
  .object({
    default: z.string({ error: 'default must name one of the models' }),
    models: z.array(modelSchema, { error: 'models must be a list' }).min(1, 'models must list at least one model'),
  })
  .strict();

/**
 * The rules across fields, checked on the raw JSON as far as its shape allows — alongside the schema, not after
 * it — so one start-up names every mistake, not only those of the first kind.
 */
function crossCheck(json: unknown, providers: readonly string[]): Array<{ path: PropertyKey[]; message: string }> {
  const issues: Array<{ path: PropertyKey[]; message: string }> = [];
  const c = json as { default?: unknown; models?: unknown } | null;
  if (!c || typeof c !== 'object' || !Array.isArray(c.models)) return issues;
  const seen = new Set<string>();
  c.models.forEach((m: unknown, i: number) => {
    const e = (m ?? {}) as Record<string, unknown>;
    if (typeof e.name === 'string') {
      if (seen.has(e.name)) issues.push({ path: ['models', i, 'name'], message: `"${e.name}" is listed twice` });
      seen.add(e.name);
    }
    if (typeof e.provider === 'string' && !providers.includes(e.provider)) {
      issues.push({ path: ['models', i, 'provider'], message: `"${e.provider}" is not a provider this server has (it has: ${providers.join(', ')})` });
    }
    if (typeof e.maxOutputTokens === 'number' && typeof e.contextTokens === 'number' && e.maxOutputTokens >= e.contextTokens) {
      issues.push({ path: ['models', i, 'maxOutputTokens'], message: 'must be less than contextTokens' });
    }
  });
  if (typeof c.default === 'string' && !seen.has(c.default)) issues.push({ path: ['default'], message: `"${c.default}" is not one of the models` });
  return issues;
}

function build(def: string, models: ModelEntry[]): Catalogue {
  const byName = new Map(models.map((m) => [m.name, m]));
  return { default: byName.get(def)!, models, get: (name) => byName.get(name), loadedAt: Math.floor(Date.now() / 1000) };
}

/** The catalogue of a JSON text; `source` names it in errors (`MODELS` or `MODELS_FILE (path)`). */
export function parseCatalogue(text: string, source: string, providers: readonly string[]): Catalogue {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError([`${source}: not valid JSON (${(err as Error).message})`]);
  }
  const parsed = catalogueSchema.safeParse(json);
  const issues = [...(parsed.success ? [] : parsed.error.issues), ...crossCheck(json, providers)];
  if (!parsed.success || issues.length > 0) {
    throw new ConfigError(issues.map((i) => `${source}${i.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}: ${i.message}`));
  }
  return build(
    parsed.data.default,
    parsed.data.models.map((m) => ({ ...m, upstreamModel: m.upstreamModel ?? m.name })),
  );
}

/** The catalogue the configuration names, or the stub alone. */
export function loadCatalogue(config: Config, providers: readonly string[], readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): Catalogue {
  if (config.MODELS && config.MODELS_FILE) throw new ConfigError(['MODELS, MODELS_FILE: set one of them, not both']);
  if (config.MODELS_FILE) {
    let text: string;
    try {
      text = readFile(config.MODELS_FILE);
    } catch (err) {
      throw new ConfigError([`MODELS_FILE: cannot read ${config.MODELS_FILE} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`]);
    }
    return parseCatalogue(text, `MODELS_FILE (${config.MODELS_FILE})`, providers);
  }
  if (config.MODELS) return parseCatalogue(config.MODELS, 'MODELS', providers);
  return build(STUB_MODEL, [
    {
      name: STUB_MODEL,
      provider: 'stub',
      upstreamModel: STUB_MODEL,
      inputSatsPer1k: config.PRICE_INPUT_SATS_PER_1K,
      outputSatsPer1k: config.PRICE_OUTPUT_SATS_PER_1K,
      maxOutputTokens: config.MAX_TOKENS_LIMIT,
      contextTokens: Math.max(STUB_CONTEXT_TOKENS, config.MAX_TOKENS_LIMIT + 1),
    },
  ]);
}
