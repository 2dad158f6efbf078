import type { Logger } from 'pino';
import { decodeInvoice, wholeSats, type DecodedInvoice, type LightningNetwork } from './bolt11.js';
import { PaymentError, type Invoice, type PaymentProvider, type PayResult } from './types.js';

/**
 * LNbits as the payment provider, over its wallet REST API (built from lnbits/lnbits v1.5:
 * `lnbits/core/views/payment_api.py`, `lnbits/core/models/payments.py`, `lnbits/core/services/payments.py`,
 * `lnbits/decorators.py`, `lnbits/exceptions.py`):
 *
 * - `POST /api/v1/payments` with `X-Api-Key: <invoice key>` and `{"out": false, "amount", "unit": "sat",
 *   "memo", "expiry", "webhook"?}` creates an invoice: `201` with the Payment (`payment_hash`, `bolt11` =
 *   `payment_request`, `status: "pending"`, …). Older LNbits answer `{payment_hash, payment_request}`: read both.
 * - `GET /api/v1/payments/{payment_hash}` with the key answers `{"paid": true, "preimage", "details"}`,
 *   `{"paid": false, "status": "failed" | "pending", "details"}`, or `404 {"detail": "Payment does not exist."}`.
 *   The key scopes the lookup to its wallet. This is the only word we take that an invoice was paid: the
 *   webhook (`webhook` above, POSTed once, unsigned, never retried) is only a hint to ask it.
 * - `POST /api/v1/payments` with `X-Api-Key: <admin key>` and `{"out": true, "bolt11"}` pays: `201` with the
 *   Payment, `status: "success"`, or `"pending"` when the funding source has not answered within LNbits's own
 *   wait (5 s by default; the payment is in flight). Failures are `520 {"detail", "status"}` (PaymentError) —
 *   `status: "failed"` certainly not paid, `"pending"` still in flight, `"success"` already paid — or
 *   `400 {"detail"}`. A payment hash LNbits once failed to pay is never tried again ("retrying is not
 *   possible"), so such an invoice is spent: the client must give another.
 * - Key errors: `401 {"detail": "No Api Key provided."}`, `404 {"detail": "Wallet not found."}`,
 *   `403 {"detail": "Invoice (or Admin) key required."}` for a payment with the invoice key.
 *
 * Keys go only into the `X-Api-Key` header: never into a log line, an error message or a URL.
 */
export interface LnbitsOptions {
  url: string;
  invoiceKey: string;
  adminKey: string;
  webhookUrl?: string;
  timeoutMs: number;
  network: LightningNetwork;
  log: Logger;
}

interface Answer {
  status: number;
  body: Record<string, unknown> | null;
}

const detailOf = (a: Answer) => {
  const d = a.body?.detail;
  const text = typeof d === 'string' ? d : d === undefined ? `HTTP ${a.status}` : JSON.stringify(d);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
};

/** Connection errors that mean the request never reached LNbits (so a payment certainly was not made). */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

export function createLnbitsProvider(opts: LnbitsOptions): PaymentProvider {
  const base = opts.url.endsWith('/') ? opts.url : `${opts.url}/`;
  const log = opts.log.child({ provider: 'lnbits' });

  async function call(method: 'GET' | 'POST', path: string, key: string, body?: unknown): Promise<Answer> {
    const url = new URL(path, base);
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { 'X-Api-Key': key, accept: 'application/json', ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(opts.timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code;
      const timedOut = (err as Error).name === 'TimeoutError';
      log.warn({ method, path, cause, timedOut }, 'LNbits did not answer');
      if (!timedOut && cause && NOT_SENT.has(cause)) throw new PaymentError('provider_unavailable', `LNbits is unreachable (${cause})`, 'failed');
      throw new PaymentError(timedOut ? 'timeout' : 'provider_unavailable', timedOut ? `LNbits did not answer within ${opts.timeoutMs} ms` : 'the connection to LNbits failed', 'unknown');
    }
    let text: string;
    try {
      text = await res.text();
    } catch {
      throw new PaymentError('timeout', 'LNbits did not finish its answer in time', 'unknown');
    }
    let parsed: unknown = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {}
    const answer = { status: res.status, body: parsed && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : null };
    if (res.status >= 400) log.warn({ method, path, status: res.status, detail: detailOf(answer) }, 'LNbits refused a call');
    return answer;
  }

  /** A refusal that is not about the payment itself: a bad key, a missing wallet, a proxy in the way. */
  function refusal(a: Answer, what: string, outcome: 'failed' | 'unknown'): PaymentError {
    if (a.status === 401 || a.status === 403 || a.status === 404) {
      return new PaymentError('provider_auth', `LNbits refused our key to ${what} (HTTP ${a.status}: ${detailOf(a)})`, 'failed');
    }
    return new PaymentError('provider_error', `LNbits could not ${what} (HTTP ${a.status}: ${detailOf(a)})`, outcome);
  }

  /** A GET of one payment, scoped by `key` to its wallet: the answer's `details.amount` is msat, negative when outgoing. */
  async function getPayment(hash: string, key: string, direction: 'incoming' | 'outgoing') {
    const a = await call('GET', `api/v1/payments/${hash}`, key);
    if (a.status === 404) return null;
    if (a.status !== 200 || !a.body) throw refusal(a, 'look up a payment', 'failed');
    // LNbits answers anyone who asks (the key is optional on this route), but adds `details` only for the
    // wallet that owns the payment. Without them the answer may be about another wallet's payment of the same
    // hash (a hold invoice can be made for any hash): believe nothing, decide nothing.
    const details = a.body.details as { amount?: unknown; payment_hash?: unknown } | undefined;
    if (!details || typeof details !== 'object' || details.payment_hash !== hash) {
      throw new PaymentError('provider_auth', 'LNbits did not answer for our wallet (the key does not own this payment)', 'failed');
    }
    const amount = details.amount;
    if (typeof amount === 'number' && (amount > 0) !== (direction === 'incoming')) {
      // The hash is known to the wallet, but in the other direction: not the payment we asked about.
      log.warn({ paymentHash: hash, direction }, 'LNbits knows this payment hash only in the other direction');
      return null;
    }
    return { paid: a.body.paid === true, failed: a.body.status === 'failed' };
  }

  return {
    name: 'lnbits',

    async createInvoice({ amountSats, memo, expirySeconds }): Promise<Invoice> {
      const a = await call('POST', 'api/v1/payments', opts.invoiceKey, {
        out: false,
        amount: amountSats,
        unit: 'sat',
        memo,
        expiry: expirySeconds,
        ...(opts.webhookUrl ? { webhook: opts.webhookUrl } : {}),
      });
      if ((a.status !== 201 && a.status !== 200) || !a.body) throw refusal(a, 'create an invoice', 'failed');
      const hash = a.body.payment_hash;
      const pr = a.body.payment_request ?? a.body.bolt11;
      if (typeof hash !== 'string' || typeof pr !== 'string') throw new PaymentError('provider_error', 'LNbits answered without a payment hash or invoice');
      // Trust, but read: the invoice must be the one we asked for, on our network, before a client sees it.
      let inv: DecodedInvoice;
      try {
        inv = decodeInvoice(pr);
      } catch (err) {
        throw new PaymentError('provider_mismatch', `LNbits returned an invoice that does not decode: ${(err as Error).message}`);
      }
      const problem =
        inv.network !== opts.network
          ? `it is a ${inv.network} invoice but LIGHTNING_NETWORK is ${opts.network}`
          : inv.paymentHash !== hash
            ? 'its payment hash is not the one LNbits reported'
            : wholeSats(inv.amountMsat) !== amountSats
              ? `it is not for ${amountSats} sats`
              : null;
      if (problem) {
        log.error({ paymentHash: hash, problem }, 'LNbits returned an invoice we cannot hand out');
        throw new PaymentError('provider_mismatch', `LNbits returned an unusable invoice: ${problem}`);
      }
      return { paymentHash: hash, paymentRequest: pr, amountSats, expiresAt: inv.expiresAt };
    },

    async lookupInvoice(paymentHash) {
      const p = await getPayment(paymentHash, opts.invoiceKey, 'incoming');
      if (!p) return null;
      return { state: p.paid ? 'paid' : p.failed ? 'cancelled' : 'pending' };
    },

    async payInvoice(inv) {
      const hash = inv.paymentHash;
      const a = await call('POST', 'api/v1/payments', opts.adminKey, { out: true, bolt11: inv.paymentRequest });
      if ((a.status === 201 || a.status === 200) && a.body) {
        if (a.body.status === 'success') return { state: 'paid', paymentHash: hash };
        if (a.body.status === 'failed') throw new PaymentError('payment_failed', 'LNbits reports the payment failed');
        // `pending`, or an older LNbits that does not say: in flight until a lookup says otherwise.
        return { state: 'pending', paymentHash: hash };
      }
      if (a.status === 520 && a.body) {
        if (a.body.status === 'success') return { state: 'paid', paymentHash: hash };
        if (a.body.status === 'pending') return { state: 'pending', paymentHash: hash };
        throw new PaymentError('payment_failed', detailOf(a));
      }
      if (a.status === 400) throw new PaymentError('payment_refused', detailOf(a));
      // A bad key was refused before anything was paid; any other answer (a 500, a proxy's 502/504) may have
      // come after the payment left: unknown until looked up.
      throw refusal(a, 'pay an invoice', 'unknown');
    },

    async lookupPayment(paymentHash): Promise<PayResult | null> {
      const p = await getPayment(paymentHash, opts.adminKey, 'outgoing');
      if (!p) return null;
      if (p.paid) return { state: 'paid', paymentHash };
      if (p.failed) return { state: 'failed', paymentHash, reason: 'LNbits recorded the payment as failed', retryable: false };
      return { state: 'pending', paymentHash };
    },

    // LNbits pushes nothing we trust: its webhook reaches `POST /api/webhooks/lnbits`, which reconciles.
    onSettled() {},
  };
}
