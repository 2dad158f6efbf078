import type { DecodedInvoice } from './bolt11.js';

/**
 * What every payment provider offers: invoices in, payments out, and word when an invoice is settled.
 * The stub node is the default; LNbits sits behind the same interface. Nothing here trusts a notification:
 * `lookupInvoice` is the provider's word that an invoice was paid, and it is asked before any sat is credited.
 */
export interface PaymentProvider {
  readonly name: string;
  createInvoice(req: { amountSats: number; memo: string; expirySeconds: number }): Promise<Invoice>;
  /** The provider's view of an invoice we created; null when it does not know it (never made, or forgotten after expiry). */
  lookupInvoice(paymentHash: string): Promise<{ state: 'pending' | 'paid' | 'cancelled' } | null>;
  /**
   * Pay an invoice (already decoded and checked by the caller). Resolves `paid`, or `pending` while the payment
   * is in flight (look it up later). Throws PaymentError: `outcome: 'failed'` when the payment certainly did
   * not happen, `'unknown'` when it may have (a timeout): then only `lookupPayment` may tell, never a second try.
   * Paying an invoice already paid resolves `paid`, as nodes refuse to pay a payment hash twice.
   */
  payInvoice(invoice: DecodedInvoice): Promise<PayResult>;
  /** Our payment of `paymentHash`, if we ever made or tried one: null when the provider never heard of it. */
  lookupPayment(paymentHash: string): Promise<PayResult | null>;
  /** Be told when an invoice we created is settled. The provider awaits the handler. */
  onSettled(handler: (paymentHash: string) => Promise<void>): void;
}

export type PayResult =
  | { state: 'paid'; paymentHash: string }
  | { state: 'pending'; paymentHash: string }
  /** `retryable`: whether the provider would try this invoice again (LNbits never does once a payment of it failed). */
  | { state: 'failed'; paymentHash: string; reason: string; retryable: boolean };

export interface Invoice {
  paymentHash: string;
  paymentRequest: string;
  amountSats: number;
  expiresAt: Date;
}

export class PaymentError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** For a payment: did it certainly not happen (`failed`), or may it have (`unknown`)? */
    readonly outcome: 'failed' | 'unknown' = 'failed',
  ) {
    super(message);
    this.name = 'PaymentError';
  }
}
