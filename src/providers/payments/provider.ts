import type { Logger } from 'pino';
import type { Config } from '../../config.js';
import type { Db } from '../../db/pool.js';
import { createLnbitsProvider } from './lnbits.js';
import { createStubPaymentProvider, type StubPaymentProvider } from './stub.js';
import type { PaymentProvider } from './types.js';

/** The payment provider PAYMENT_PROVIDER names, configured from `config`; `stub` is set when it is the stub node. */
export function createPaymentProvider(config: Config, db: Db, log: Logger): { payments: PaymentProvider; stub: StubPaymentProvider | null } {
  if (config.PAYMENT_PROVIDER === 'lnbits') {
    const payments = createLnbitsProvider({
      // config.ts refuses to start without these when PAYMENT_PROVIDER=lnbits.
      url: config.LNBITS_URL!,
      invoiceKey: config.LNBITS_INVOICE_KEY!,
      adminKey: config.LNBITS_ADMIN_KEY!,
      webhookUrl: config.LNBITS_WEBHOOK_URL,
      timeoutMs: config.LNBITS_TIMEOUT_MS,
      network: config.LIGHTNING_NETWORK,
      log,
    });
    return { payments, stub: null };
  }
  const stub = createStubPaymentProvider(db, { network: config.LIGHTNING_NETWORK });
  return { payments: stub, stub };
}
