import { createHash, randomBytes } from 'node:crypto';
import { decode, encode, sign } from '@atomiqlabs/bolt11';

/**
 * BOLT 11 payment requests, for every payment backend: decode (checksum, signature, amount, network, expiry)
 * the invoices clients give us to pay, and encode and sign the stub node's own invoices.
 *
 * The work is done by `@atomiqlabs/bolt11`, the maintained fork of bitcoinjs's `bolt11` (same API and test
 * vectors) built on the audited noble/scure cryptography instead of native secp256k1; decoding verifies the
 * signature. This file only adds what the library leaves to its caller: which network a prefix names
 * (signet's `tbs` included), whole-sat amounts, and the checks a refund invoice must pass.
 */

export const LIGHTNING_NETWORKS = ['bitcoin', 'testnet', 'signet', 'regtest'] as const;
export type LightningNetwork = (typeof LIGHTNING_NETWORKS)[number];

/** The library's network objects; the bech32 prefix after `ln` is what tells networks apart in an invoice. */
const NETWORKS: Record<LightningNetwork, { bech32: string; pubKeyHash: number; scriptHash: number; validWitnessVersions: number[]; wif: number }> = {
  bitcoin: { bech32: 'bc', pubKeyHash: 0x00, scriptHash: 0x05, validWitnessVersions: [0, 1], wif: 0x80 },
  testnet: { bech32: 'tb', pubKeyHash: 0x6f, scriptHash: 0xc4, validWitnessVersions: [0, 1], wif: 0xef },
  signet: { bech32: 'tbs', pubKeyHash: 0x6f, scriptHash: 0xc4, validWitnessVersions: [0, 1], wif: 0xef },
  regtest: { bech32: 'bcrt', pubKeyHash: 0x6f, scriptHash: 0xc4, validWitnessVersions: [0, 1], wif: 0xef },
};
// Longest first: `lnbcrt` must not be read as `lnbc`, nor `lntbs` as `lntb`.
const BY_PREFIX = (Object.entries(NETWORKS) as Array<[LightningNetwork, { bech32: string }]>).sort((a, b) => b[1].bech32.length - a[1].bech32.length);

/** The human-readable prefix an invoice of `network` starts with (`lnbcrt` for regtest). */
export const invoicePrefix = (network: LightningNetwork) => `ln${NETWORKS[network].bech32}`;

export interface DecodedInvoice {
  /** The invoice as given, trimmed and lower-cased (bech32 is case-insensitive; nodes compare lower case). */
  paymentRequest: string;
  network: LightningNetwork;
  paymentHash: string;
  /** Null for an invoice without an amount. */
  amountMsat: bigint | null;
  createdAt: Date;
  /** Creation time plus its expiry (3600 s when the invoice names none, as BOLT 11 says). */
  expiresAt: Date;
  description: string;
  payeeNodeKey: string;
}

export class InvoiceDecodeError extends Error {
  constructor(
    readonly code: 'invalid_invoice' | 'unknown_network',
    message: string,
  ) {
    super(message);
    this.name = 'InvoiceDecodeError';
  }
}

/** Which network an invoice is for, from its prefix alone; null when it names none we know. */
export function networkOf(paymentRequest: string): LightningNetwork | null {
  const s = paymentRequest.trim().toLowerCase();
  if (!s.startsWith('ln')) return null;
  const hrp = s.slice(2, s.lastIndexOf('1') > 2 ? s.lastIndexOf('1') : undefined);
  return BY_PREFIX.find(([, n]) => hrp.startsWith(n.bech32))?.[0] ?? null;
}

/** Decode and verify a BOLT 11 invoice, or throw InvoiceDecodeError. */
export function decodeInvoice(paymentRequest: string): DecodedInvoice {
  const pr = paymentRequest.trim().toLowerCase();
  const network = networkOf(pr);
  if (!network) {
    throw pr.startsWith('ln')
      ? new InvoiceDecodeError('unknown_network', 'the invoice is for a network this server does not know')
      : new InvoiceDecodeError('invalid_invoice', 'not a BOLT 11 Lightning invoice');
  }
  let d: ReturnType<typeof decode>;
  try {
    d = decode(pr, NETWORKS[network]);
  } catch (err) {
    throw new InvoiceDecodeError('invalid_invoice', `not a valid BOLT 11 invoice (${err instanceof Error ? err.message : 'undecodable'})`);
  }
  const hash = d.tagsObject.payment_hash;
  if (!hash || !/^[0-9a-f]{64}$/.test(hash)) throw new InvoiceDecodeError('invalid_invoice', 'the invoice has no payment hash');
  if (d.timestamp === undefined || d.timeExpireDate === undefined) throw new InvoiceDecodeError('invalid_invoice', 'the invoice has no timestamp');
  return {
    paymentRequest: pr,
    network,
    paymentHash: hash,
    amountMsat: d.millisatoshis ? BigInt(d.millisatoshis) : null,
    createdAt: new Date(d.timestamp * 1000),
    expiresAt: new Date(d.timeExpireDate * 1000),
    description: d.tagsObject.description ?? '',
    payeeNodeKey: d.payeeNodeKey ?? '',
  };
}

/** Whole sats of an invoice amount, or null when it has none or is not a whole number of sats. */
export function wholeSats(msat: bigint | null): number | null {
  if (msat === null || msat % 1000n !== 0n) return null;
  const sats = msat / 1000n;
  return sats > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(sats);
}

export type RefundInvoiceProblem =
  | { code: 'invalid_invoice'; message: string }
  | { code: 'wrong_network'; message: string; details: { expectedNetwork: LightningNetwork; invoiceNetwork: LightningNetwork | null } }
  | { code: 'invoice_expired'; message: string; details: { expiresAt: string } }
  | { code: 'amount_required'; message: string }
  | { code: 'wrong_amount'; message: string; details: { expectedSats: number; invoiceSats: number | null; invoiceMsat: string } };

/**
 * Check an invoice someone wants us to pay `amountSats` to: a valid invoice of our network, not expired (nor
 * about to: a payment needs `marginS` to cross the network), for exactly that amount.
 */
export function checkRefundInvoice(
  paymentRequest: string,
  want: { network: LightningNetwork; amountSats: number; marginS?: number; now?: number },
): { ok: true; invoice: DecodedInvoice } | { ok: false; problem: RefundInvoiceProblem } {
  let inv: DecodedInvoice;
  try {
    inv = decodeInvoice(paymentRequest);
  } catch (err) {
    const e = err as InvoiceDecodeError;
    if (e.code === 'unknown_network') {
      return { ok: false, problem: { code: 'wrong_network', message: `the invoice is not a ${want.network} invoice`, details: { expectedNetwork: want.network, invoiceNetwork: null } } };
    }
    return { ok: false, problem: { code: 'invalid_invoice', message: e.message } };
  }
  if (inv.network !== want.network) {
    return {
      ok: false,
      problem: { code: 'wrong_network', message: `the invoice is for ${inv.network}; this server pays ${want.network} invoices`, details: { expectedNetwork: want.network, invoiceNetwork: inv.network } },
    };
  }
  const now = want.now ?? Date.now();
  if (inv.expiresAt.getTime() <= now + (want.marginS ?? 0) * 1000) {
    return { ok: false, problem: { code: 'invoice_expired', message: 'the invoice has expired (or expires too soon to be paid); make a new one', details: { expiresAt: inv.expiresAt.toISOString() } } };
  }
  if (inv.amountMsat === null) {
    return { ok: false, problem: { code: 'amount_required', message: `the invoice has no amount; make one for exactly ${want.amountSats} sats` } };
  }
  const sats = wholeSats(inv.amountMsat);
  if (sats !== want.amountSats) {
    return {
      ok: false,
      problem: {
        code: 'wrong_amount',
        message: `the invoice is for ${sats ?? `${inv.amountMsat} msat`}${sats === null ? '' : ' sats'}; the refund is ${want.amountSats} sats`,
        details: { expectedSats: want.amountSats, invoiceSats: sats, invoiceMsat: inv.amountMsat.toString() },
      },
    };
  }
  return { ok: true, invoice: inv };
}

/** A new preimage and its payment hash. */
export function newPreimage(): { preimage: string; paymentHash: string } {
  const preimage = randomBytes(32);
  return { preimage: preimage.toString('hex'), paymentHash: createHash('sha256').update(preimage).digest('hex') };
}

/** Does `preimage` (hex) hash to `paymentHash`? The proof that whoever shows it paid the invoice. */
export function preimageMatches(preimage: string, paymentHash: string): boolean {
  if (!/^[0-9a-f]{64}$/i.test(preimage)) return false;
  return createHash('sha256').update(Buffer.from(preimage, 'hex')).digest('hex') === paymentHash.toLowerCase();
}

/** Encode and sign an invoice with a node key (hex): the stub node's invoices, and test payers'. */
export function encodeInvoice(req: {
  network: LightningNetwork;
  amountSats: number | null;
  paymentHash: string;
  description: string;
  expirySeconds: number;
  nodeKey: string;
  /** Seconds since the epoch; now by default. */
  timestamp?: number;
}): string {
  const unsigned = encode(
    {
      network: NETWORKS[req.network],
      ...(req.amountSats === null ? {} : { satoshis: req.amountSats }),
      timestamp: req.timestamp ?? Math.floor(Date.now() / 1000),
      tags: [
        { tagName: 'payment_hash', data: req.paymentHash },
        { tagName: 'payment_secret', data: randomBytes(32).toString('hex') },
        { tagName: 'description', data: req.description },
        { tagName: 'expire_time', data: req.expirySeconds },
      ],
    },
    // Defaults fill what a node's invoice carries besides: feature bits (payment secret, var onion), a CLTV delta.
    true,
  );
  const signed = sign(unsigned, req.nodeKey);
  if (!signed.paymentRequest) throw new Error('bolt11: signing produced no payment request');
  return signed.paymentRequest;
}

/** A fresh node private key (hex). */
export const newNodeKey = () => randomBytes(32).toString('hex');
