import type { RouteConfig } from '@asteasolutions/zod-to-openapi';
import type { Express } from 'express';
import type { AppContext } from '../../src/context.js';
import { describeApi, docContext } from '../../src/openapi/document.js';

/**
 * Routes the app mounts that are deliberately not in the OpenAPI document, each with the reason. (The console's
 * static files are `express.static` middleware, not routes, so the walk never sees them.)
 */
export const NOT_IN_SPEC: Record<string, string> = {
  'GET /metrics': 'Prometheus’s text format for scrapers, guarded by METRICS_TOKEN: an operator endpoint, not the client API (README: Metrics)',
  'GET /console/qr.svg': 'the browser console’s QR images: part of the console page, not of the API',
  'GET /docs': 'the API reference page itself (HTML that renders this document)',
  'GET /docs/scalar.js': 'the API reference page’s script (Scalar’s bundle, served from node_modules)',
};

interface ListedRoute {
  path: string | RegExp;
  methods?: string[];
  router?: { listRoutes(): ListedRoute[] };
}

/** An Express 5 path (`/runs/:runId`, `/models/*name`) as an OpenAPI path template (`/runs/{runId}`, `/models/{name}`). */
export function toTemplate(path: string): string {
  if (/[{}()?+]/.test(path)) throw new Error(`cannot compare ${path} with the document: optional groups and regexp syntax have no OpenAPI form`);
  return path.replace(/[:*]([A-Za-z_$][\w$]*)/g, '{$1}');
}

const join = (prefix: string, path: string) => `${prefix}/${path}`.replace(/\/+/g, '/').replace(/(.)\/$/, '$1');

/**
 * Every `METHOD /path` the app mounts: Express 5's router (router 2.x) lists a router's routes and mounted
 * routers with `listRoutes()` (paths as registered, one entry per path of an array); mounted routers are walked
 * with their mount path as prefix. The implicit HEAD of a GET is not a route of its own.
 */
export function mountedRoutes(app: Express): Set<string> {
  const root = (app as unknown as { router: { listRoutes?: () => ListedRoute[] } }).router;
  // router >= 2.3 (a devDependency, so Express's own copy is one that has it).
  if (typeof root.listRoutes !== 'function') throw new Error('this router has no listRoutes(): the drift check needs router >= 2.3 (Express 5)');
  const out = new Set<string>();
  const walk = (routes: ListedRoute[], prefix: string) => {
    for (const r of routes) {
      if (typeof r.path !== 'string') throw new Error(`cannot compare a RegExp route (${String(r.path)}) with the document: mount it on a string path`);
      const full = join(prefix, r.path);
      if (r.router) {
        walk(r.router.listRoutes(), full);
        continue;
      }
      for (const m of r.methods ?? []) {
        if (m === '*') throw new Error(`${full} takes every method (.all()): the document cannot describe it`);
        if (m !== 'HEAD') out.add(`${m} ${toTemplate(full)}`);
      }
    }
  };
  walk(root.listRoutes(), '/');
  return out;
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

/** Every `METHOD /path` of an OpenAPI document. */
export function documentedRoutes(doc: { paths: Record<string, Record<string, unknown>> }): Set<string> {
  const out = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths)) for (const m of Object.keys(item)) if (METHODS.includes(m)) out.add(`${m.toUpperCase()} ${path}`);
  return out;
}

/** The registered routes of this context's document, with their zod schemas, by `METHOD /path`. */
export function routeConfigs(ctx: AppContext): Map<string, RouteConfig> {
  const out = new Map<string, RouteConfig>();
  for (const d of describeApi(docContext(ctx)).definitions) if (d.type === 'route') out.set(`${d.route.method.toUpperCase()} ${d.route.path}`, d.route);
  return out;
}

/** JSON Schema 2020-12's keywords, and the OpenAPI 3.1 dialect's own (`example`, `discriminator`, `xml`, `externalDocs`). */
const KEYWORDS = new Set(
  [
    '$id $schema $ref $anchor $dynamicRef $dynamicAnchor $vocabulary $comment $defs',
    'allOf anyOf oneOf not if then else dependentSchemas prefixItems items contains properties patternProperties additionalProperties propertyNames unevaluatedItems unevaluatedProperties',
    'type enum const multipleOf maximum exclusiveMaximum minimum exclusiveMinimum maxLength minLength pattern maxItems minItems uniqueItems maxContains minContains maxProperties minProperties required dependentRequired',
    'format contentEncoding contentMediaType contentSchema title description default deprecated readOnly writeOnly examples',
    'example discriminator xml externalDocs',
  ]
    .join(' ')
    .split(' '),
);
/** Keywords whose value is a schema, a list of schemas, or a map of schemas. */
const ONE = ['not', 'if', 'then', 'else', 'items', 'contains', 'additionalProperties', 'propertyNames', 'unevaluatedItems', 'unevaluatedProperties', 'contentSchema'];
const MANY = ['allOf', 'anyOf', 'oneOf', 'prefixItems'];
const MAP = ['properties', 'patternProperties', '$defs', 'dependentSchemas'];

/**
 * What is wrong with the Schema Objects of a document (the OpenAPI validators check the document's structure but
 * not the JSON Schemas inside it): each must pass JSON Schema 2020-12's meta-schema, use only known keywords, and
 * have patterns that compile as ECMA-262 (`u`) regular expressions.
 */
export function schemaProblems(doc: Record<string, any>, validateSchema: (s: unknown) => boolean, errorsText: () => string): string[] {
  const problems: string[] = [];
  const check = (s: unknown, where: string) => {
    if (typeof s === 'boolean') return;
    if (!s || typeof s !== 'object') return void problems.push(`${where}: not a schema`);
    const schema = s as Record<string, unknown>;
    for (const k of Object.keys(schema)) if (!KEYWORDS.has(k) && !k.startsWith('x-')) problems.push(`${where}: unknown keyword ${k}`);
    if (typeof schema.pattern === 'string') {
      try {
        new RegExp(schema.pattern, 'u');
      } catch (err) {
        problems.push(`${where}: pattern ${schema.pattern}: ${(err as Error).message}`);
      }
    }
    for (const k of ONE) if (k in schema) check(schema[k], `${where}/${k}`);
    for (const k of MANY) if (Array.isArray(schema[k])) (schema[k] as unknown[]).forEach((x, i) => check(x, `${where}/${k}/${i}`));
    for (const k of MAP) if (schema[k] && typeof schema[k] === 'object') for (const [n, x] of Object.entries(schema[k] as object)) check(x, `${where}/${k}/${n}`);
  };
  const root = (s: unknown, where: string) => {
    if (!validateSchema(s)) problems.push(`${where}: ${errorsText()}`);
    check(s, where);
  };
  const content = (c: Record<string, { schema?: unknown }> | undefined, where: string) => {
    for (const [type, media] of Object.entries(c ?? {})) if (media.schema !== undefined) root(media.schema, `${where}/content/${type}`);
  };
  for (const [name, s] of Object.entries(doc.components?.schemas ?? {})) root(s, `#/components/schemas/${name}`);
  for (const [name, h] of Object.entries<any>(doc.components?.headers ?? {})) root(h.schema, `#/components/headers/${name}`);
  for (const [path, item] of Object.entries<any>(doc.paths ?? {})) {
    for (const [method, op] of Object.entries<any>(item)) {
      const at = `${method.toUpperCase()} ${path}`;
      for (const p of op.parameters ?? []) root(p.schema, `${at} parameter ${p.name}`);
      content(op.requestBody?.content, `${at} requestBody`);
      for (const [status, res] of Object.entries<any>(op.responses ?? {})) content(res.content, `${at} ${status}`);
    }
  }
  return problems;
}
