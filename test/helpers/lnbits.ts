import { expect } from 'vitest';
import type { Config } from '../../src/config.js';
import { startFakeLnbits, type FakeLnbits } from '../fakes/lnbits.js';
import { startTestServer, type TestServer } from './context.js';
import { freePort } from './global-setup.js';
import { waitJob } from './jobs.js';

/** A whole Sluice server whose payments go to a fake LNbits, with its webhook pointed back at itself. */
export async function startLnbitsServer(fake: FakeLnbits, overrides: Partial<Config> = {}): Promise<TestServer> {
  const port = await freePort();
  return startTestServer(
    {
      PAYMENT_PROVIDER: 'lnbits',
      LIGHTNING_NETWORK: 'bitcoin',
      LNBITS_URL: fake.url,
      LNBITS_INVOICE_KEY: fake.wallet.inkey,
      LNBITS_ADMIN_KEY: fake.wallet.adminkey,
      LNBITS_WEBHOOK_URL: `http://127.0.0.1:${port}/api/webhooks/lnbits`,
      // Generous, for a loaded machine; the tests of a timeout use a short one of their own.
      LNBITS_TIMEOUT_MS: 5_000,
      INVOICE_EXPIRY_GRACE_S: 0,
      REFUND_RETRY_BASE_S: 0.05,
      ...overrides,
    },
    { port },
  );
}

/** Another LNbits user pays `bolt11` from their wallet (an internal payment), as a client would. */
export async function payFromLnbitsWallet(fake: FakeLnbits, bolt11: string) {
  const res = await fetch(`${fake.url}/api/v1/payments`, {
    method: 'POST',
    headers: { 'X-Api-Key': fake.payer.adminkey, 'content-type': 'application/json' },
    body: JSON.stringify({ out: true, bolt11 }),
  });
  const body = (await res.json()) as { status: string; preimage: string | null; payment_hash: string };
  return { status: res.status, body };
}

/** The requests Sluice made to LNbits that paid `paymentHash` (POST out:true with that invoice). */
export function payRequestsFor(fake: FakeLnbits, bolt11: string) {
  return fake.requests.filter((r) => r.method === 'POST' && r.body.includes(bolt11) && JSON.parse(r.body).out === true);
}

/** A job whose work failed, paid over Lightning through LNbits: it owes its whole work amount back. */
export async function failedLnbitsJob(t: TestServer, fake: FakeLnbits) {
  const created = await t.http.post('/api/jobs').send({ request: 'fail me [stub:fail] [stub:tokens=4] [stub:delay=1]' }).expect(201);
  await fake.settleExternally(created.body.evalInvoice.paymentHash);
  const quoted = await waitJob(t, created.body.jobId, ['awaiting_work_payment']);
  await fake.settleExternally(quoted.workInvoice.paymentHash);
  const failed = await waitJob(t, created.body.jobId, ['failed']);
  expect(failed.costLedger.refundAmountSats).toBe(quoted.workInvoice.amountSats);
  return { jobId: created.body.jobId as string, owed: quoted.workInvoice.amountSats as number, workHash: quoted.workInvoice.paymentHash as string };
}
