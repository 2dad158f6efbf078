import assert from 'node:assert/strict';
import { decodeInvoice, encodeInvoice, newNodeKey, newPreimage } from '../../src/providers/payments/bolt11.js';
import { poll, type Client } from './client.js';

/** The job flow over plain HTTP: eval invoice, work invoice, stream, cost ledger, refund once. */
export async function jobFlow(api: Client, log: (msg: string) => void = () => {}) {
  const created = await api.post('/api/jobs', { body: { request: 'testkit job [stub:tokens=12] [stub:delay=20]' }, expect: 201 });
  const { jobId, evalInvoice } = created.body;
  assert.equal(created.body.state, 'awaiting_eval_payment');
  // Open the stream before anything is paid: it must still deliver the whole answer.
  const streamed = api.stream(`/api/jobs/${jobId}/stream`);
  await api.post(`/api/dev/stub/pay/${evalInvoice.paymentHash}`, { expect: 200 });
  const quoted = await poll(async () => {
    const j = await api.get(`/api/jobs/${jobId}`, { expect: 200 });
    return j.body.state === 'awaiting_work_payment' ? j.body : null;
  }, 'the work invoice');
  assert.equal(quoted.workInvoice.amountSats, quoted.pricingBreakdown.workAmountSats);
  await api.post(`/api/dev/stub/pay/${quoted.workInvoice.paymentHash}`, { expect: 200 });
  const events = await streamed;
  assert.equal(events.at(-1)?.event, 'done');
  const tokens = events.filter((e) => e.event === 'token').map((e) => e.data.content).join('');
  const done = await poll(async () => {
    const j = await api.get(`/api/jobs/${jobId}`, { expect: 200 });
    return j.body.state === 'complete' ? j.body : null;
  }, 'the job to complete');
  assert.equal(done.result, tokens);
  const cl = done.costLedger;
  assert.equal(cl.refundAmountSats, cl.workAmountSats - cl.actualAmountSats);
  log(`job ${jobId}: ${cl.actualOutputTokens} tokens, ${cl.actualAmountSats} of ${cl.workAmountSats} sats used`);

  // A failed job owes the whole work amount; the refund is paid once.
  const failing = await api.post('/api/jobs', { body: { request: 'testkit failing job [stub:fail] [stub:delay=5]' }, expect: 201 });
  await api.post(`/api/dev/stub/pay/${failing.body.evalInvoice.paymentHash}`, { expect: 200 });
  const fq = await poll(async () => {
    const j = await api.get(`/api/jobs/${failing.body.jobId}`, { expect: 200 });
    return j.body.state === 'awaiting_work_payment' ? j.body : null;
  }, 'the failing job quote');
  await api.post(`/api/dev/stub/pay/${fq.workInvoice.paymentHash}`, { expect: 200 });
  const failed = await poll(async () => {
    const j = await api.get(`/api/jobs/${failing.body.jobId}`, { expect: 200 });
    return j.body.state === 'failed' ? j.body : null;
  }, 'the job to fail');
  const owed = failed.costLedger.refundAmountSats;
  assert.equal(owed, fq.workInvoice.amountSats);
  // The refund invoice a client's wallet would make: a real BOLT 11 invoice on the server's own network.
  const { network } = decodeInvoice(failing.body.evalInvoice.paymentRequest);
  const invoice = encodeInvoice({ network, amountSats: owed, paymentHash: newPreimage().paymentHash, description: 'testkit refund', expirySeconds: 600, nodeKey: newNodeKey() });
  const refund = await api.post(`/api/jobs/${failing.body.jobId}/refund`, { body: { invoice }, expect: 200 });
  assert.equal(refund.body.state, 'paid');
  assert.equal(refund.body.amountSats, owed);
  const again = await api.post(`/api/jobs/${failing.body.jobId}/refund`, { body: { invoice }, expect: 409 });
  assert.equal(again.body.error.details.refundPaymentHash, refund.body.refundPaymentHash);
  log('job flow: ok');
}
