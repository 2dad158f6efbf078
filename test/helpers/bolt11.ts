import { encodeInvoice, newNodeKey, newPreimage, type LightningNetwork } from '../../src/providers/payments/bolt11.js';

/** The node key of "the client's wallet" in tests: invoices it makes are real, signed BOLT 11 invoices. */
const PAYER_NODE_KEY = newNodeKey();

/** A refund invoice as a client's wallet would make it, with its preimage (which only that wallet knows). */
export function clientInvoice(
  amountSats: number | null,
  opts: { network?: LightningNetwork; expirySeconds?: number; description?: string; timestamp?: number } = {},
) {
  const { preimage, paymentHash } = newPreimage();
  const bolt11 = encodeInvoice({
    network: opts.network ?? 'regtest',
    amountSats,
    paymentHash,
    description: opts.description ?? 'sluice refund',
    expirySeconds: opts.expirySeconds ?? 3600,
    nodeKey: PAYER_NODE_KEY,
    timestamp: opts.timestamp,
  });
  return { bolt11, paymentHash, preimage };
}
