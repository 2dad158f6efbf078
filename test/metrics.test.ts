import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/context.js';
import { pay, quotedJob, waitJob } from './helpers/jobs.js';
import { paidSession, postRequest, waitFinal } from './helpers/sessions.js';
import { readSse } from './helpers/sse.js';
import { waitFor } from './helpers/wait.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ MAX_CONCURRENT_RUNS: 1 });
});
afterAll(() => t.close());

const scrape = async (server: TestServer = t) => {
  const res = await server.http.get('/metrics').expect(200);
  return res.text;
};

/** The value of one sample (`name{labels}` exactly as exposed, labels in their registered order), or 0 if absent. */
function sample(text: string, series: string): number {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return 0;
}

const NAMES = [
  'sluice_runs_accepted_total',
  'sluice_runs_finished_total',
  'sluice_runs_executing',
  'sluice_runs_queued',
  'sluice_streams_open',
  'sluice_stream_subscribers',
  'sluice_tokens_streamed_total',
  'sluice_accept_duration_seconds',
  'sluice_time_to_first_token_seconds',
  'sluice_sats_debited_total',
  'sluice_sats_charged_total',
  'sluice_sats_refunded_total',
  'sluice_db_pool_clients',
  'sluice_db_pool_idle_clients',
  'sluice_db_pool_waiting_clients',
  'sluice_provider_errors_total',
  'sluice_rate_limited_total',
];

describe('GET /metrics', () => {
  it('serves every metric in the Prometheus text format, with Node’s defaults', async () => {
    await t.http.get('/api/healthz').expect(200);
    const res = await t.http.get('/metrics').expect(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const name of NAMES) expect(res.text).toContain(`# TYPE ${name} `);
    expect(res.text).toContain('# TYPE process_cpu_user_seconds_total counter');
    expect(res.text).toContain('# TYPE nodejs_eventloop_lag_seconds gauge');
    expect(sample(res.text, 'sluice_db_pool_clients')).toBeGreaterThan(0);
  });

  it('counts a session run: accepted, finished, tokens, money, accept latency and time to first token', async () => {
    const before = await scrape();
    const s = await paidSession(t, 1000);
    const r = await postRequest(t, s, 'count me [stub:tokens=7] [stub:delay=1]');
    const done = await waitFinal(t, s, r.requestId);
    const after = await waitFor(async () => {
      const text = await scrape();
      return sample(text, 'sluice_runs_finished_total{kind="session",state="complete"}') > sample(before, 'sluice_runs_finished_total{kind="session",state="complete"}') ? text : null;
    });
    const delta = (series: string) => sample(after, series) - sample(before, series);
    expect(delta('sluice_runs_accepted_total{kind="session"}')).toBe(1);
    expect(delta('sluice_runs_finished_total{kind="session",state="complete"}')).toBe(1);
    expect(delta('sluice_tokens_streamed_total{provider="stub"}')).toBe(7);
    expect(delta('sluice_sats_debited_total{kind="session"}')).toBe(r.debitedSats);
    expect(delta('sluice_sats_charged_total{kind="session"}')).toBe(done.chargedSats);
    expect(delta('sluice_sats_refunded_total{kind="session"}')).toBe(done.refundedSats);
    expect(delta('sluice_accept_duration_seconds_count{route="session_request"}')).toBe(1);
    expect(delta('sluice_time_to_first_token_seconds_count{kind="session"}')).toBe(1);
    expect(sample(after, 'sluice_time_to_first_token_seconds_sum{kind="session"}')).toBeGreaterThan(0);
  });

  it('counts provider errors by code, and a failed run by state', async () => {
    const before = await scrape();
    const s = await paidSession(t, 1000);
    const r = await postRequest(t, s, 'break [stub:fail] [stub:tokens=4] [stub:delay=1]');
    await waitFinal(t, s, r.requestId);
    const after = await waitFor(async () => {
      const text = await scrape();
      return sample(text, 'sluice_runs_finished_total{kind="session",state="failed"}') > sample(before, 'sluice_runs_finished_total{kind="session",state="failed"}') ? text : null;
    });
    expect(sample(after, 'sluice_provider_errors_total{provider="stub",code="provider_error"}') - sample(before, 'sluice_provider_errors_total{provider="stub",code="provider_error"}')).toBe(1);
  });

  it('counts a job run with its kind, and its work payment as debited', async () => {
    const before = await scrape();
    const quoted = await quotedJob(t, 'job metrics [stub:tokens=3] [stub:delay=1]');
    await pay(t, quoted.workInvoice.paymentHash);
    await waitJob(t, quoted.jobId, ['complete']);
    const after = await waitFor(async () => {
      const text = await scrape();
      return sample(text, 'sluice_runs_finished_total{kind="job",state="complete"}') > sample(before, 'sluice_runs_finished_total{kind="job",state="complete"}') ? text : null;
    });
    expect(sample(after, 'sluice_runs_accepted_total{kind="job"}') - sample(before, 'sluice_runs_accepted_total{kind="job"}')).toBe(1);
    expect(sample(after, 'sluice_sats_debited_total{kind="job"}') - sample(before, 'sluice_sats_debited_total{kind="job"}')).toBe(quoted.workInvoice.amountSats);
  });

  it('reads executing, queued, open streams and subscribers as they are now', async () => {
    const s = await paidSession(t, 5000);
    // MAX_CONCURRENT_RUNS is 1: the second run waits queued while the first executes.
    const first = await postRequest(t, s, 'long [stub:tokens=200] [stub:delay=20]');
    const second = await postRequest(t, s, 'waits [stub:tokens=200] [stub:delay=20]');
    const controller = new AbortController();
    let seen = 0;
    const reading = readSse(`${t.url}/api/runs/${first.requestId}/stream`, { headers: s.auth, signal: controller.signal, onEvent: () => seen++ });
    await waitFor(() => seen >= 2, { what: 'the stream to be live' });
    const live = await scrape();
    expect(sample(live, 'sluice_runs_executing')).toBe(1);
    expect(sample(live, 'sluice_runs_queued')).toBe(1);
    expect(sample(live, 'sluice_streams_open')).toBe(1);
    expect(sample(live, 'sluice_stream_subscribers')).toBe(1);
    controller.abort();
    await reading.catch(() => undefined);
    await t.http.post(`/api/runs/${first.requestId}/stop`).set(s.auth).expect(202);
    await t.http.post(`/api/runs/${second.requestId}/stop`).set(s.auth).expect(202);
    await waitFinal(t, s, second.requestId);
    const idle = await waitFor(async () => {
      const text = await scrape();
      return sample(text, 'sluice_runs_executing') === 0 && sample(text, 'sluice_streams_open') === 0 ? text : null;
    });
    expect(sample(idle, 'sluice_runs_queued')).toBe(0);
    expect(sample(idle, 'sluice_stream_subscribers')).toBe(0);
    expect(sample(idle, 'sluice_runs_finished_total{kind="session",state="cancelled"}')).toBeGreaterThanOrEqual(2);
  });

  it('counts the OpenAI face too: accept latency per route, its streams, its runs and money', async () => {
    const before = await scrape();
    const s = await paidSession(t, 2000);
    const v1 = (path: string, body: object) => t.http.post(`/v1${path}`).set(s.auth).send(body);
    const bg = await v1('/responses', { input: 'background [stub:tokens=3] [stub:delay=1]', background: true }).expect(200);
    await v1('/responses', { input: 'sync [stub:tokens=3] [stub:delay=1]' }).expect(200);
    await v1('/chat/completions', { messages: [{ role: 'user', content: 'chat [stub:tokens=3] [stub:delay=1]' }] }).expect(200);
    // A stream open while it is scraped.
    const long = await v1('/responses', { input: 'long [stub:tokens=200] [stub:delay=20]', background: true }).expect(200);
    const controller = new AbortController();
    let seen = 0;
    const reading = readSse(`${t.url}/v1/responses/${long.body.id}?stream=true`, { headers: s.auth, signal: controller.signal, onEvent: () => seen++ });
    await waitFor(() => seen >= 5, { what: 'the /v1 stream to be live' });
    expect(sample(await scrape(), 'sluice_streams_open')).toBe(1);
    controller.abort();
    await reading.catch(() => undefined);
    await t.http.post(`/v1/responses/${long.body.id}/cancel`).set(s.auth).expect(200);
    await waitFor(async () => (await t.http.get(`/v1/responses/${bg.body.id}`).set(s.auth)).body.status === 'completed', { what: 'the background response' });
    const after = await waitFor(async () => {
      const text = await scrape();
      return sample(text, 'sluice_streams_open') === 0 ? text : null;
    });
    const delta = (series: string) => sample(after, series) - sample(before, series);
    expect(delta('sluice_accept_duration_seconds_count{route="v1_responses"}')).toBe(3);
    expect(delta('sluice_accept_duration_seconds_count{route="v1_chat_completions"}')).toBe(1);
    expect(delta('sluice_runs_accepted_total{kind="session"}')).toBe(4);
    expect(delta('sluice_runs_finished_total{kind="session",state="complete"}')).toBe(3);
    expect(delta('sluice_runs_finished_total{kind="session",state="cancelled"}')).toBe(1);
    expect(delta('sluice_sats_debited_total{kind="session"}')).toBeGreaterThan(0);
  });

  it('keeps each context’s metrics to itself (a registry per context, never the global one)', async () => {
    const other = await t.sibling();
    try {
      const text = await scrape(other);
      expect(sample(text, 'sluice_runs_accepted_total{kind="session"}')).toBe(0);
      expect(sample(await scrape(), 'sluice_runs_accepted_total{kind="session"}')).toBeGreaterThan(0);
    } finally {
      await other.close();
    }
  });

  it('asks for METRICS_TOKEN as a bearer token when it is set', async () => {
    const guarded = await t.sibling({ METRICS_TOKEN: 'scrape-secret-123' });
    try {
      const none = await guarded.http.get('/metrics').expect(401);
      expect(none.body.error.code).toBe('unauthorized');
      expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
      await guarded.http.get('/metrics').set('Authorization', 'Bearer wrong').expect(401);
      const ok = await guarded.http.get('/metrics').set('Authorization', 'Bearer scrape-secret-123').expect(200);
      expect(ok.text).toContain('sluice_runs_accepted_total');
    } finally {
      await guarded.close();
    }
  });
});
