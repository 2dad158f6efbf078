import { pyIsoformat } from './python-json.js';

/** A row of LNbits's `apipayments` table, as its `Payment` model (lnbits/core/models/payments.py) holds it. */
export interface PaymentRecord {
  checking_id: string;
  payment_hash: string;
  wallet_id: string;
  amount: number;
  fee: number;
  bolt11: string;
  status: 'pending' | 'success' | 'failed';
  memo: string;
  expiry: Date | null;
  webhook: string | null;
  webhook_status: string | null;
  preimage: string | null;
  time: Date;
  created_at: Date;
  updated_at: Date;
  /** Fake-only: the node's fate for an outgoing payment that is still pending. */
  resolvesTo?: 'success';
}

/** The Payment model's fields, in pydantic's order (`payment_request` mirrors `bolt11`). */
export function paymentJson(p: PaymentRecord) {
  return {
    checking_id: p.checking_id,
    payment_hash: p.payment_hash,
    wallet_id: p.wallet_id,
    amount: p.amount,
    fee: p.fee,
    bolt11: p.bolt11,
    payment_request: p.bolt11,
    fiat_provider: null,
    status: p.status,
    memo: p.memo,
    expiry: p.expiry ? pyIsoformat(p.expiry) : null,
    webhook: p.webhook,
    webhook_status: p.webhook_status,
    preimage: p.preimage,
    tag: null,
    extension: null,
    time: pyIsoformat(p.time),
    created_at: pyIsoformat(p.created_at),
    updated_at: pyIsoformat(p.updated_at),
    labels: [],
    extra: {},
  };
}

/** LNbits's fee reserve: max(lnbits_reserve_fee_min = 2000 msat, 1 %). */
export const feeReserveMsat = (amountMsat: number) => Math.max(2000, Math.floor(Math.abs(amountMsat) * 0.01));
