// A Lightning invoice as a person pays it: its QR code (drawn by our server), the bolt11 with a copy button, a
// wallet link, and — on a development server — a button that pays it with the stub wallet.
import { payWithStub } from './api.js';
import { badge, button, copyButton, h, problem, sats, toast } from './ui.js';

/**
 * `status` is what the page knows of it: the server's `invoice.state` — 'pending' (waiting to be paid), 'paid',
 * 'expired' (closed unpaid) or 'refundable' (paid too late: the payer can claim it back) — unless the caller
 * knows better. `onPaid` is called after the stub wallet paid it.
 */
export function invoiceCard({ title, invoice, status = invoice.state ?? 'pending', onPaid, note }) {
  const paid = status === 'paid';
  if (status === 'expired' || status === 'refundable') {
    const why = status === 'expired' ? 'It expired unpaid: it can no longer be paid.' : 'It was paid after it could be used: the payer can claim the sats back with the preimage.';
    return h('div', { class: `invoice ${status}`, dataset: { paymentHash: invoice.paymentHash, status } }, h('div', { class: 'inv-title' }, title, badge(status), h('span', { class: 'grow' }), h('b', {}, sats(invoice.amountSats))), h('p', { class: 'hint' }, why));
  }
  // Paid: one quiet line is enough.
  if (paid) {
    return h('div', { class: 'invoice paid', dataset: { paymentHash: invoice.paymentHash, status } }, h('div', { class: 'inv-title' }, '✓ ', title, badge('paid'), h('span', { class: 'grow' }), h('b', {}, sats(invoice.amountSats))));
  }
  const qr = h('img', {
    class: 'qr',
    alt: `QR code of the ${title.toLowerCase()}`,
    width: 132,
    height: 132,
    src: `/console/qr.svg?data=${encodeURIComponent(invoice.paymentRequest)}`,
  });
  const expires = invoice.expiresAt ? ` · expires ${new Date(invoice.expiresAt).toLocaleTimeString()}` : '';
  const statusLine = h('div', { class: 'inv-status' }, h('span', { class: 'spinner' }), note ?? `waiting for payment…${expires}`);
  const stub = button('⚡ Pay (stub wallet)', async () => {
    stub.disabled = true;
    try {
      if (await payWithStub(invoice.paymentHash)) {
        statusLine.replaceChildren('✓ paid');
        onPaid?.();
      } else {
        toast('This server has no stub wallet: pay the invoice with a Lightning wallet.');
        stub.hidden = true;
      }
    } catch (err) {
      toast(problem(err), 'bad');
      stub.disabled = false;
    }
  }, 'amber small', { dataset: { pay: invoice.paymentHash } });
  return h(
    'div',
    { class: `invoice ${status}`, dataset: { paymentHash: invoice.paymentHash, status } },
    qr,
    h(
      'div',
      { class: 'inv-body' },
      h('div', { class: 'inv-title' }, title, badge(status)),
      h('div', { class: 'amount' }, sats(invoice.amountSats)),
      h('div', { class: 'bolt11', title: invoice.paymentRequest }, invoice.paymentRequest),
      h('div', { class: 'row' }, copyButton(invoice.paymentRequest, 'Copy invoice'), h('a', { class: 'btn ghost small', href: `lightning:${invoice.paymentRequest}` }, 'Open wallet'), stub),
      statusLine,
    ),
  );
}
