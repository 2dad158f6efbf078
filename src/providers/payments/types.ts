/**
 * What every payment provider offers: invoices in, payments out, and word when an invoice is settled.
 * The stub is the default; a real Lightning backend (LNbits, LND) sits behind the same interface.
 */
export interface PaymentProvider {
  readonly name: string;
  createInvoice(req: { amountSats: number; memo: string }): Promise<Invoice>;
  /** The provider's view of an invoice we created; null when it does not know it. */
  lookupInvoice(paymentHash: string): Promise<{ state: 'pending' | 'paid' } | null>;
  /** Read an invoice someone gave us to pay; null when it is not one this provider can pay. */
  decodeInvoice(paymentRequest: string): { amountSats: number } | null;
  /** Pay an invoice. Throws PaymentError('already_paid') for one that was paid before, as a node would. */
  payInvoice(paymentRequest: string): Promise<{ paymentHash: string; amountSats: number }>;
  /** Our payment of an invoice, if we made one (to finish a payout a crash interrupted without paying twice). */
  lookupPayment(paymentRequest: string): Promise<{ paymentHash: string } | null>;
  /** Be told when an invoice we created is settled. The provider awaits the handler. */
  onSettled(handler: (paymentHash: string) => Promise<void>): void;
}

export interface Invoice {
  paymentHash: string;
  paymentRequest: string;
  amountSats: number;
}

export class PaymentError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'PaymentError';
  }
}
