import { compileErrors, validate } from '@readme/openapi-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSessionBody, requestBody } from '../src/sessions/sessions.schemas.js';
import { jobCreateBody } from '../src/jobs/jobs.schemas.js';
import { responseCreateBody } from '../src/openai/schemas.js';
import { startFakeLnbits, type FakeLnbits } from './fakes/lnbits.js';
import { startTestServer, type TestServer } from './helpers/context.js';
import { NOT_IN_SPEC, documentedRoutes, mountedRoutes, routeConfigs, schemaProblems } from './helpers/openapi.js';

let stub: TestServer;
let lnbits: TestServer;
let fake: FakeLnbits;
let prod: TestServer;
beforeAll(async () => {
  fake = await startFakeLnbits();
  // Each listens on a port of its own choosing (0): nothing here can race another test file for a port.
  const lnbitsConfig = { PAYMENT_PROVIDER: 'lnbits', LIGHTNING_NETWORK: 'bitcoin', LNBITS_URL: fake.url, LNBITS_INVOICE_KEY: fake.wallet.inkey, LNBITS_ADMIN_KEY: fake.wallet.adminkey } as const;
  [stub, lnbits, prod] = await Promise.all([startTestServer(), startTestServer(lnbitsConfig), startTestServer({ NODE_ENV: 'production' })]);
});
afterAll(async () => {
  await Promise.all([stub?.close(), lnbits?.close(), prod?.close()]);
  await fake?.close();
});

const documentOf = async (t: TestServer) => (await t.http.get('/api/openapi.json').expect(200).expect('content-type', /^application\/json/)).body;

describe('the OpenAPI document', () => {
  it('is valid OpenAPI 3.1 (@readme/openapi-parser: the official schema and the rules it does not cover)', async () => {
    for (const t of [stub, lnbits, prod]) {
      const doc = await documentOf(t);
      expect(doc.openapi).toBe('3.1.0');
      const result = await validate(structuredClone(doc));
      expect(result.valid, compileErrors(result)).toBe(true);
      expect(result.warnings).toEqual([]);
    }
  });

  it('holds only valid JSON Schemas (2020-12, the dialect of OpenAPI 3.1), which the validator above does not check', async () => {
    const ajv = new Ajv2020({ strict: false });
    const problems = schemaProblems(await documentOf(stub), (s) => ajv.validateSchema(s as object) as boolean, () => ajv.errorsText());
    expect(problems).toEqual([]);
    // And the check can fail: a broken schema, an unknown keyword and a pattern with regexp flags are caught.
    const broken = { paths: {}, components: { schemas: { A: { type: 'objekt' }, B: { type: 'string', exmaple: 1 }, C: { type: 'string', pattern: '^a$/i(' } } } };
    expect(schemaProblems(broken, (s) => ajv.validateSchema(s as object) as boolean, () => ajv.errorsText())).toHaveLength(3);
  });

  /**
   * The drift check: walk the real Express app's routers (router 2.x's `listRoutes()`, recursing into mounted
   * routers) and compare with the document both ways, in every configuration that mounts different routes.
   * A new route fails here until its feature's `*.openapi.ts` describes it (or NOT_IN_SPEC lists it, with why).
   */
  it('describes every route the app mounts, and only those, in every configuration', async () => {
    for (const [name, t] of [
      ['stub payments (development routes mounted)', stub],
      ['LNbits (its webhook mounted)', lnbits],
      ['production (no development routes)', prod],
    ] as const) {
      const mounted = mountedRoutes(t.app);
      const documented = documentedRoutes(await documentOf(t));
      const undocumented = [...mounted].filter((r) => !documented.has(r) && !(r in NOT_IN_SPEC));
      const unmounted = [...documented].filter((r) => !mounted.has(r));
      expect(undocumented, `${name}: mounted but not in the OpenAPI document — describe them in the feature's *.openapi.ts (or list them in NOT_IN_SPEC with a reason)`).toEqual([]);
      expect(unmounted, `${name}: in the OpenAPI document but not mounted`).toEqual([]);
      const stale = Object.keys(NOT_IN_SPEC).filter((r) => !mounted.has(r));
      expect(stale, `${name}: NOT_IN_SPEC lists routes the app does not mount`).toEqual([]);
    }
    const paths = (t: TestServer) => documentOf(t).then((d) => Object.keys(d.paths));
    expect(await paths(stub)).toContain('/api/dev/stub/pay/{paymentHash}');
    expect(await paths(stub)).not.toContain('/api/webhooks/lnbits');
    expect(await paths(lnbits)).toContain('/api/webhooks/lnbits');
    expect(await paths(prod)).not.toContain('/api/dev/stub/wallet/invoice');
  });

  it('describes requests with the very schemas the routes validate with, built once per configuration', () => {
    const routes = routeConfigs(stub.ctx);
    const body = (key: string) => routes.get(key)?.request?.body?.content['application/json'];
    const schemaOf = (key: string) => (body(key) as { schema?: unknown } | undefined)?.schema;
    expect(schemaOf('POST /api/sessions')).toBe(createSessionBody(stub.ctx.config));
    expect(schemaOf('POST /api/sessions/{id}/request')).toBe(requestBody(stub.ctx.config));
    expect(schemaOf('POST /api/jobs')).toBe(jobCreateBody(stub.ctx.config));
    expect(schemaOf('POST /v1/responses')).toBe(responseCreateBody);
    // The limits of the configuration are in the document.
    const small = routeConfigs(prod.ctx);
    expect(small.get('POST /api/sessions')).toBeDefined();
  });

  it('has examples that its own schemas accept', () => {
    let checked = 0;
    for (const [key, route] of routeConfigs(stub.ctx)) {
      const media = route.request?.body?.content['application/json'] as { schema: { safeParse(v: unknown): { success: boolean; error?: unknown } }; examples?: Record<string, { value: unknown }> } | undefined;
      for (const [name, example] of Object.entries(media?.examples ?? {})) {
        const parsed = media!.schema.safeParse(example.value);
        expect(parsed.success, `${key}, example ${name}: ${JSON.stringify(parsed.error)}`).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(15);
  });

  it('is served as built at start-up, with the configured limits', async () => {
    const a = await stub.http.get('/api/openapi.json').expect(200);
    const b = await stub.http.get('/api/openapi.json').expect(200);
    expect(a.text).toBe(b.text);
    expect(a.headers.etag).toBe(b.headers.etag);
    const amount = a.body.paths['/api/sessions'].post.requestBody.content['application/json'].schema.properties.amount_sats;
    expect(amount).toMatchObject({ type: 'integer', minimum: stub.ctx.config.SESSION_MIN_SATS, maximum: stub.ctx.config.SESSION_MAX_SATS });
    const other = await startTestServer({ SESSION_MAX_SATS: 777 });
    try {
      const doc = await documentOf(other);
      expect(doc.paths['/api/sessions'].post.requestBody.content['application/json'].schema.properties.amount_sats.maximum).toBe(777);
    } finally {
      await other.close();
    }
  });

  it('describes security, the error envelopes, SSE, idempotency and limits', async () => {
    const doc = await documentOf(stub);
    expect(doc.components.securitySchemes.sessionToken).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.components.securitySchemes.accessToken).toMatchObject({ type: 'apiKey', in: 'query', name: 'access_token' });
    const stream = doc.paths['/api/sessions/{id}/requests/{requestId}/stream'].get;
    expect(stream.security).toEqual([{ sessionToken: [] }, { accessToken: [] }]);
    expect(Object.keys(stream.responses[200].content)).toEqual(['text/event-stream']);
    expect(stream.parameters.map((p: { name: string; in: string }) => `${p.in}:${p.name}`)).toEqual(
      expect.arrayContaining(['header:Last-Event-ID', 'query:starting_after', 'path:id', 'path:requestId']),
    );
    const accept = doc.paths['/api/sessions/{id}/request'].post;
    expect(accept.parameters.find((p: { name: string }) => p.name === 'Idempotency-Key')).toMatchObject({ in: 'header', required: false });
    expect(accept.responses[429].headers).toHaveProperty('Retry-After');
    expect(accept.responses[409].content['application/json'].schema.properties.error.properties.code.enum).toEqual(['session_not_active', 'idempotency_key_conflict']);
    const v1 = doc.paths['/v1/responses'].post;
    expect(Object.keys(v1.responses[200].content)).toEqual(['application/json', 'text/event-stream']);
    expect(v1.responses[503].headers).toHaveProperty('Retry-After');
    expect(v1.responses[400].content['application/json'].schema).toEqual({ $ref: '#/components/schemas/OpenAIError' });
  });
});
