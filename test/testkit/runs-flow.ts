import assert from 'node:assert/strict';
import { poll, type Client } from './client.js';

/** The runs API over plain HTTP: list, stream with the run frame, stop mid-run, delete. */
export async function runsFlow(api: Client, session: { sessionId: string; token: string }, log: (msg: string) => void = () => {}) {
  const { sessionId, token } = session;
  const accepted = await api.post(`/api/sessions/${sessionId}/request`, { token, body: { request: 'testkit long [stub:tokens=500] [stub:delay=20]' }, expect: 202 });
  const runId = accepted.body.requestId;
  const listed = await api.get('/api/runs?limit=5', { token, expect: 200 });
  assert.equal(listed.body.data[0].runId, runId);
  await poll(async () => (await api.get(`/api/runs/${runId}`, { token })).body.result.length > 0, 'some output');
  await api.post(`/api/runs/${runId}/stop`, { token, expect: 202 });
  const events = await api.stream(`/api/runs/${runId}/stream`, { authorization: `Bearer ${token}` });
  assert.equal(events[0]?.event, 'run');
  assert.equal(events.at(-1)?.data.state, 'cancelled');
  const run = (await api.get(`/api/runs/${runId}`, { token, expect: 200 })).body;
  assert.equal(run.state, 'cancelled');
  assert.equal(run.chargedSats + run.refundedSats, run.debitedSats);
  await api.delete(`/api/runs/${runId}`, { token, expect: 204 });
  await api.get(`/api/runs/${runId}`, { token, expect: 404 });
  log('runs flow: ok');
}
