import supertest from 'supertest';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { createWorkerApp } from '../src/health.js';
import { useTestServers } from './helpers/context.js';

/** An adversarial pass over the operator surface: configuration, metrics, headers, roles. */

const problems = (env: Record<string, string>): string => {
  try {
    loadConfig(env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).problems.join('\n');
  }
  return '';
};

describe('configuration: values that would break the process later are refused at start-up', () => {
  it('refuses a timer longer than Node can hold (it would fire every millisecond) and a sweep that would spin', () => {
    // 3e9 ms is past 2^31 − 1: Node runs such a timer after 1 ms, so a ping or a sweep "every 35 days" spins.
    for (const [key, value] of [
      ['SSE_PING_MS', '3000000000'],
      ['SSE_POLL_MS', '3000000000'],
      ['SSE_WRITE_TIMEOUT_MS', '3000000000'],
      ['SHUTDOWN_GRACE_MS', '3000000000'],
      ['LEASE_TTL_S', '9000000'],
      ['STREAM_SLOT_TTL_S', '9000000'],
      ['SWEEP_INTERVAL_S', '3000000'],
      ['SWEEP_INTERVAL_S', '0.000001'],
      ['JOB_STREAM_WAIT_S', '3000000'],
    ] as const) {
      expect(problems({ [key]: value }), `${key}=${value}`).toMatch(new RegExp(`^${key}: .*\\(got "${value}"\\)`));
    }
  });

  it('refuses durations whose dates would be out of range, and keeps the ones in use', () => {
    for (const key of ['SESSION_EXPIRY_HOURS', 'IDEMPOTENCY_TTL_HOURS', 'RUN_RETENTION_DAYS']) {
      expect(problems({ [key]: '1e20' }), key).toMatch(new RegExp(`^${key}: `));
    }
    expect(new Date(Date.now() - loadConfig({ RUN_RETENTION_DAYS: '36500' }).RUN_RETENTION_DAYS * 86_400_000).getTime()).not.toBeNaN();
    expect(loadConfig({ SWEEP_INTERVAL_S: '0.25', SSE_PING_MS: '60000', LEASE_TTL_S: '3600' })).toMatchObject({ SWEEP_INTERVAL_S: 0.25, SSE_PING_MS: 60_000, LEASE_TTL_S: 3600 });
  });

  it('takes a blank value as unset, like an empty one, instead of reading it as 0', () => {
    // Number(' ') is 0: MAX_CONNECTIONS=' ' meant "as many as the file limit allows" only by accident, and
    // SHUTDOWN_GRACE_MS=' ' interrupted every run at once on a rolling restart.
    expect(loadConfig({ SHUTDOWN_GRACE_MS: ' ', PORT: '  ', SESSION_MAX_CONCURRENT_RUNS: '\t' })).toMatchObject({
      SHUTDOWN_GRACE_MS: 10_000,
      PORT: 3000,
      SESSION_MAX_CONCURRENT_RUNS: 16,
    });
  });
});

const servers = useTestServers();

describe('a worker process’s HTTP face', () => {
  it('serves its health and metrics only, with the security headers every response carries', async () => {
    const worker = await servers.server({ PROCESS_ROLE: 'worker', METRICS_TOKEN: 'scrape-me' });
    const http = supertest(createWorkerApp(worker.ctx));
    const health = await http.get('/api/healthz').expect(200);
    expect(health.body).toMatchObject({ status: 'ok', role: 'worker', runs: { executing: 0 } });
    const answers = {
      'GET /api/healthz': health,
      'GET /metrics (no token)': await http.get('/metrics').expect(401),
      'GET /metrics': await http.get('/metrics').set('Authorization', 'Bearer scrape-me').expect(200),
      'POST /api/sessions': await http.post('/api/sessions').send({ amount_sats: 200 }).expect(404),
      'GET /': await http.get('/').expect(404),
    };
    for (const [what, res] of Object.entries(answers)) {
      expect(res.headers, what).toMatchObject({
        'x-content-type-options': 'nosniff',
        'x-frame-options': 'SAMEORIGIN',
        'referrer-policy': 'no-referrer',
        'content-security-policy': expect.stringContaining("default-src 'self'"),
      });
      expect(res.headers['x-powered-by']).toBeUndefined();
    }
  });
});

describe('the OpenAPI document against what every POST answers to a body it cannot parse', () => {
  it('documents the 400 of a body that is not JSON and the 413 of one over the limit, on every POST (bodyless ones too)', async () => {
    const t = await servers.server({ V1_BODY_LIMIT_KB: 16 });
    const doc = (await t.http.get('/api/openapi.json').expect(200)).body as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    const undocumented: string[] = [];
    let posts = 0;
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (!ops.post) continue;
      posts++;
      const url = path.replace(/\{[^}]+\}/g, (p) => (/hash/i.test(p) ? '0'.repeat(64) : '00000000-0000-4000-8000-000000000000'));
      // The body parsers run before authentication and routing: these answers come whatever the route does.
      const garbled = await t.http.post(url).set('Content-Type', 'application/json').send('{"request": ');
      const huge = await t.http.post(url).set('Content-Type', 'application/json').send(JSON.stringify({ request: 'x'.repeat(100 * 1024) }));
      for (const res of [garbled, huge]) {
        if (!(String(res.status) in ops.post.responses)) undocumented.push(`POST ${path} → ${res.status} ${res.text.slice(0, 100)}`);
      }
    }
    expect(posts).toBeGreaterThan(10);
    expect(undocumented).toEqual([]);
  });
});
