import { randomBytes } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodeInvoice, encodeInvoice, newNodeKey, newPreimage, type LightningNetwork } from '../../src/providers/payments/bolt11.js';
import { feeReserveMsat, paymentJson, type PaymentRecord } from './lnbits-models.js';
import { pyDumps } from './python-json.js';

/**
 * A local LNbits that speaks its wallet REST API as LNbits v1.5 implements it (lnbits/lnbits: `core/views/
 * payment_api.py`, `core/services/payments.py`, `core/models/payments.py`, `decorators.py`, `exceptions.py`,
 * `core/services/notifications.py`), on top of a scripted Lightning node:
 *
 * - `POST /api/v1/payments` (key in `X-Api-Key`, or `?api-key=`): `out: false` creates an invoice (`201`, the
 *   Payment as JSON); `out: true` with an admin key pays a `bolt11` — internally when the invoice is one of
 *   this LNbits's own (no expiry check, as LNbits's `_pay_internal_invoice`), else through the node.
 * - `GET /api/v1/payments/{hash}` (`X-Api-Key` header only, optional): `{paid, status?, preimage?, details?}`.
 * - Errors as LNbits shapes them: `401/403/404 {"detail"}`, `400 {"detail"}`, `520 {"detail", "status"}`.
 * - On an incoming payment, the invoice's `webhook` is POSTed once, never retried, with httpx's `json=` of
 *   pydantic's `payment.json()` — a JSON string holding the payment's JSON — and `User-Agent: LNbits/<version>`.
 *
 * The node's fate for each outgoing payment is scripted with `node.next` (default `ok`): `no_route` (LNbits
 * records it failed: that invoice can never be paid again through LNbits), `in_flight` (LNbits answers
 * `pending` after its wait; the node settles it by the next lookup), `hang` (paid, but LNbits's answer never
 * comes). Every request is recorded in `requests`.
 */
export const LNBITS_VERSION = '1.5.2-rc3';

export interface FakeWallet {
  id: string;
  inkey: string;
  adminkey: string;
  balanceMsat: number;
}

export type NodeOutcome = 'ok' | 'no_route' | 'in_flight' | 'hang';

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface FakeLnbits {
  url: string;
  /** The merchant's wallet (Sluice's keys). */
  wallet: FakeWallet;
  /** Another user of the same LNbits, who pays Sluice's invoices internally. */
  payer: FakeWallet;
  /**
   * `next`: the fate of the next outgoing payments. `cancelsExpired`: whether the node reports an unpaid
   * invoice past its expiry as failed (LND does; LNbits's own FakeWallet funding source keeps it pending, and
   * then another wallet of the same LNbits can still pay it internally).
   */
  node: { next: NodeOutcome[]; cancelsExpired: boolean };
  /** While set, a reverse proxy in front of LNbits answers every request `503` (LNbits itself is unreachable). */
  down: boolean;
  requests: RecordedRequest[];
  webhooks: Array<{ url: string; status: number | null; headers: Record<string, string>; body: string }>;
  /** Someone pays an invoice of ours over Lightning (the node refuses an expired one). Resolves once the webhook was sent. */
  settleExternally(paymentHash: string): Promise<void>;
  /** Payments of a hash in every wallet. */
  paymentsOf(paymentHash: string): PaymentRecord[];
  /** Every payment of a wallet, in and out. */
  walletPayments(walletId: string): PaymentRecord[];
  /** Wait until every webhook in flight was delivered. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

const wallet = (balanceSats: number): FakeWallet => ({
  id: randomBytes(16).toString('hex'),
  inkey: randomBytes(16).toString('hex'),
  adminkey: randomBytes(16).toString('hex'),
  balanceMsat: balanceSats * 1000,
});

export async function startFakeLnbits(opts: { network?: LightningNetwork; payWaitMs?: number } = {}): Promise<FakeLnbits> {
  const network = opts.network ?? 'bitcoin';
  const nodeKey = newNodeKey();
  const merchant = wallet(1_000_000);
  const payer = wallet(1_000_000);
  const wallets = [merchant, payer];
  const payments: PaymentRecord[] = [];
  const requests: RecordedRequest[] = [];
  const webhooks: FakeLnbits['webhooks'] = [];
  const inFlightWebhooks = new Set<Promise<void>>();
  const hanging = new Set<ServerResponse>();
  const node = { next: [] as NodeOutcome[], cancelsExpired: true };

  const byKey = (key: string | undefined) => (key ? wallets.find((w) => w.inkey === key || w.adminkey === key) : undefined);
  const walletById = (id: string) => wallets.find((w) => w.id === id)!;

  function send(res: ServerResponse, status: number, body: unknown) {
    // FastAPI's JSONResponse: compact separators, UTF-8.
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
  const detail = (res: ServerResponse, status: number, message: string) => send(res, status, { detail: message });
  const paymentError = (res: ServerResponse, message: string, status: 'failed' | 'pending' | 'success' = 'failed') => send(res, 520, { detail: message, status });

  /** `get_standalone_payment`: by checking_id or hash, optionally within a wallet, lowest amount first. */
  function standalone(hash: string, walletId?: string, incoming = false) {
    return payments
      .filter((p) => (p.checking_id === hash || p.payment_hash === hash) && (!walletId || p.wallet_id === walletId) && (!incoming || p.amount > 0))
      .sort((a, b) => a.amount - b.amount)[0];
  }

  function dispatchWebhook(p: PaymentRecord) {
    if (!p.webhook || p.webhook_status) return;
    const body = pyDumps(pyDumps(paymentJson(p)));
    const url = new URL(p.webhook);
    const headers = { 'User-Agent': `LNbits/${LNBITS_VERSION}`, accept: '*/*', 'accept-encoding': 'gzip, deflate', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) };
    const done = new Promise<void>((resolve) => {
      const req = http.request(url, { method: 'POST', headers, timeout: 40_000 }, (res) => {
        res.resume();
        res.on('end', () => {
          p.webhook_status = String(res.statusCode);
          webhooks.push({ url: p.webhook!, status: res.statusCode ?? null, headers, body });
          resolve();
        });
      });
      req.on('error', () => {
        p.webhook_status = '-1';
        webhooks.push({ url: p.webhook!, status: null, headers, body });
        resolve();
      });
      req.end(body);
    });
    inFlightWebhooks.add(done);
    void done.finally(() => inFlightWebhooks.delete(done));
    return done;
  }

  function creditIncoming(p: PaymentRecord) {
    p.status = 'success';
    p.updated_at = new Date();
    walletById(p.wallet_id).balanceMsat += p.amount;
    return dispatchWebhook(p);
  }

  function createInvoice(w: FakeWallet, body: Record<string, unknown>, res: ServerResponse) {
    const amount = Number(body.amount ?? 0);
    if (!(amount > 0)) return paymentError(res, 'Amountless invoices not supported.');
    const memo = typeof body.memo === 'string' ? body.memo : 'LNbits';
    const expiry = typeof body.expiry === 'number' && body.expiry > 0 ? body.expiry : 3600;
    const { preimage, paymentHash } = newPreimage();
    const now = new Date();
    const timestamp = Math.floor(now.getTime() / 1000);
    const bolt11 = encodeInvoice({ network, amountSats: Math.floor(amount), paymentHash, description: memo, expirySeconds: expiry, nodeKey, timestamp });
    const p: PaymentRecord = {
      checking_id: paymentHash,
      payment_hash: paymentHash,
      wallet_id: w.id,
      amount: Math.floor(amount) * 1000,
      fee: 0,
      bolt11,
      status: 'pending',
      memo,
      expiry: new Date((timestamp + expiry) * 1000),
      webhook: typeof body.webhook === 'string' ? body.webhook : null,
      webhook_status: null,
      preimage,
      time: now,
      created_at: now,
      updated_at: now,
    };
    payments.push(p);
    send(res, 201, paymentJson(p));
  }

  async function pay(w: FakeWallet, bolt11: string, res: ServerResponse) {
    let inv;
    try {
      inv = decodeInvoice(bolt11);
    } catch {
      return paymentError(res, 'Bolt11 decoding failed.');
    }
    if (!inv.amountMsat || inv.amountMsat <= 0n) return paymentError(res, 'Amountless invoices not supported.');
    const amountMsat = Number(inv.amountMsat);
    const hash = inv.paymentHash;
    if (payments.some((p) => p.payment_hash === hash && p.amount > 0 && p.status === 'success')) return paymentError(res, 'Internal invoice already paid.');
    const now = new Date();
    // Internal: an invoice of this LNbits, still pending (LNbits does not look at its expiry here).
    const internal = payments.find((p) => p.checking_id === hash && p.amount > 0 && p.status === 'pending');
    if (internal) {
      if (internal.amount !== amountMsat || internal.bolt11 !== bolt11.toLowerCase()) return paymentError(res, 'Invalid invoice. Bolt11 changed.');
      if (w.balanceMsat < amountMsat) return paymentError(res, 'Insufficient balance.');
      const out: PaymentRecord = { ...internal, checking_id: `internal_${hash}`, wallet_id: w.id, amount: -amountMsat, fee: 0, status: 'success', webhook: null, time: now, created_at: now, updated_at: now };
      payments.push(out);
      w.balanceMsat -= amountMsat;
      void creditIncoming(internal);
      return send(res, 201, paymentJson(out));
    }
    if (w.balanceMsat < amountMsat) return paymentError(res, 'Insufficient balance.');
    const reserve = feeReserveMsat(amountMsat);
    if (w.balanceMsat < amountMsat + reserve) return paymentError(res, `You must reserve at least (${Math.round(reserve / 1000)}  sat) to cover potential routing fees.`);
    const old = standalone(hash);
    if (old) {
      if (old.status === 'pending') return paymentError(res, 'Payment is still pending.', 'pending');
      if (old.status === 'success') return paymentError(res, 'Payment already paid.', 'success');
      return paymentError(res, 'Payment is failed node, retrying is not possible.', 'failed');
    }
    const p: PaymentRecord = {
      checking_id: hash,
      payment_hash: hash,
      wallet_id: w.id,
      amount: -amountMsat,
      fee: -reserve,
      bolt11: bolt11.toLowerCase(),
      status: 'pending',
      memo: inv.description,
      expiry: inv.expiresAt,
      webhook: null,
      webhook_status: null,
      preimage: null,
      time: now,
      created_at: now,
      updated_at: now,
    };
    payments.push(p);
    const outcome = node.next.shift() ?? 'ok';
    const succeed = () => {
      p.status = 'success';
      p.fee = 0;
      p.preimage = randomBytes(32).toString('hex');
      p.updated_at = new Date();
      w.balanceMsat -= amountMsat;
    };
    if (outcome === 'no_route') {
      p.status = 'failed';
      return paymentError(res, 'Payment failed: FAILURE_REASON_NO_ROUTE');
    }
    if (outcome === 'in_flight') {
      // LNbits waits lnbits_funding_source_pay_invoice_wait_seconds, then answers with the pending payment.
      p.resolvesTo = 'success';
      await new Promise((r) => setTimeout(r, opts.payWaitMs ?? 20));
      return send(res, 201, paymentJson(p));
    }
    succeed();
    if (outcome === 'hang') {
      hanging.add(res);
      res.on('close', () => hanging.delete(res));
      return;
    }
    send(res, 201, paymentJson(p));
  }

  function getPayment(hash: string, key: string | undefined, res: ServerResponse) {
    const w = byKey(key);
    const p = standalone(hash, w?.id);
    if (!p) return detail(res, 404, 'Payment does not exist.');
    const owner = w && w.id === p.wallet_id;
    if (p.status === 'success') return send(res, 200, owner ? { paid: true, preimage: p.preimage, details: paymentJson(p) } : { paid: true, preimage: p.preimage });
    if (p.status === 'failed') return send(res, 200, owner ? { paid: false, status: 'failed', details: paymentJson(p) } : { paid: false, status: 'failed' });
    // update_pending_payment: ask the node. An in-flight payment has landed; an invoice past expiry is cancelled.
    if (p.resolvesTo === 'success') {
      p.status = 'success';
      p.fee = 0;
      p.preimage = randomBytes(32).toString('hex');
      walletById(p.wallet_id).balanceMsat += p.amount;
    } else if (node.cancelsExpired && p.amount > 0 && p.expiry && p.expiry.getTime() <= Date.now()) {
      p.status = 'failed';
    }
    if (owner) return send(res, 200, { paid: p.status === 'success', status: p.status, preimage: p.preimage, details: paymentJson(p) });
    return send(res, 200, { paid: p.status === 'success', preimage: p.preimage });
  }

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', 'http://lnbits.local');
    requests.push({ method: req.method ?? '', path: url.pathname + url.search, headers: req.headers, body: text });
    if (api.down) {
      res.writeHead(503, { 'content-type': 'text/html' });
      return res.end('<html><body><h1>503 Service Unavailable</h1></body></html>');
    }
    const headerKey = typeof req.headers['x-api-key'] === 'string' ? req.headers['x-api-key'] : undefined;

    const one = /^\/api\/v1\/payments\/([^/]+)$/.exec(url.pathname);
    if (req.method === 'GET' && one) return getPayment(one[1]!, headerKey, res);
    if (req.method === 'POST' && url.pathname === '/api/v1/payments') {
      const key = headerKey ?? url.searchParams.get('api-key') ?? undefined;
      if (!key) return detail(res, 401, 'No Api Key provided.');
      const w = byKey(key);
      if (!w) return detail(res, 404, 'Wallet not found.');
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(text);
      } catch {
        return send(res, 400, { detail: [{ loc: ['body', 0], msg: 'Expecting value: line 1 column 1 (char 0)', type: 'value_error.jsondecode' }] });
      }
      if (typeof body.memo === 'string' && body.memo.length > 640) {
        return send(res, 400, { detail: [{ loc: ['body', 'memo'], msg: 'ensure this value has at most 640 characters', type: 'value_error.any_str.max_length', ctx: { limit_value: 640 } }] });
      }
      const out = body.out === undefined ? true : body.out === true;
      const admin = w.adminkey === key;
      if (out && admin) {
        if (!body.bolt11) return detail(res, 400, 'Missing BOLT11 invoice');
        return pay(w, String(body.bolt11), res);
      }
      if (out) return detail(res, 403, 'Invoice (or Admin) key required.');
      return createInvoice(w, body, res);
    }
    detail(res, 404, 'Not Found');
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!res.headersSent) send(res, 500, { detail: `Unexpected error! ID: ${String(err)}` });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const api: FakeLnbits = {
    url,
    down: false,
    wallet: merchant,
    payer,
    node,
    requests,
    webhooks,
    async settleExternally(paymentHash) {
      const p = payments.find((x) => x.checking_id === paymentHash && x.amount > 0);
      if (!p) throw new Error('fake LNbits: no such invoice');
      if (p.expiry && p.expiry.getTime() <= Date.now()) throw new Error('fake LNbits: the node refuses to pay an expired invoice');
      if (p.status !== 'pending') throw new Error(`fake LNbits: the invoice is ${p.status}`);
      await creditIncoming(p);
    },
    paymentsOf: (hash) => payments.filter((p) => p.payment_hash === hash),
    walletPayments: (id) => payments.filter((p) => p.wallet_id === id),
    async idle() {
      while (inFlightWebhooks.size) await Promise.all(inFlightWebhooks);
    },
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
  return api;
}
