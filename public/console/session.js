// The session panel: create or open a session, pay its deposit, top it up, and its balance and ledger.
import { api, store } from './api.js';
import { invoiceCard } from './invoice.js';
import { ago, badge, button, copyButton, fill, h, problem, sats, short, signed, toast, until } from './ui.js';

/**
 * `onChange(session | null)` hears of every refresh (the ask panel enables itself on an active session);
 * `onOpenRun(runId)` is called when a ledger row's run is clicked.
 */
export function createSessionPanel({ card, ledgerCard, onChange, onOpenRun }) {
  let creds = store.get('session');
  let session = null;
  let ledger = null;
  let timer = null;
  let busy = false;

  const pending = () => {
    const p = store.get('invoice');
    return p && creds && p.sessionId === creds.id ? p : null;
  };

  async function refresh() {
    if (!creds || busy) return;
    busy = true;
    try {
      // GET /sessions/:id also asks the payment provider about unpaid invoices, so a payment shows up here.
      const [s, l] = await Promise.all([api('GET', `/sessions/${creds.id}`, { token: creds.token }), api('GET', `/sessions/${creds.id}/ledger`, { token: creds.token })]);
      session = s;
      ledger = l;
      const p = pending();
      if (p && l.entries.some((e) => e.paymentHash === p.invoice.paymentHash)) {
        store.set('invoice', null);
        toast(`${p.kind === 'deposit' ? 'Deposit' : 'Top-up'} of ${sats(p.invoice.amountSats)} received`);
      }
      render();
      onChange?.(session);
    } catch (err) {
      if (err.status === 401 || err.status === 404) {
        fill(card, h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Session')), h('p', {}, 'This browser remembers a session the server does not know (its token no longer opens it).'), button('Forget it', forget, 'ghost'));
        ledgerCard.hidden = true;
        onChange?.(null);
      } else if (err.status !== 429 && err.status !== 0) {
        toast(problem(err), 'bad');
      }
    } finally {
      busy = false;
      schedule();
    }
  }

  /** Poll while a payment is awaited (every 2 s), else now and then (runs move the balance too). */
  function schedule() {
    clearTimeout(timer);
    if (creds) timer = setTimeout(refresh, pending() || session?.state === 'awaiting_payment' ? 2000 : 8000);
  }

  async function create(amount) {
    try {
      const c = await api('POST', '/sessions', { body: { amount_sats: amount } });
      creds = { id: c.sessionId, token: c.sessionToken };
      store.set('session', creds);
      store.set('invoice', { kind: 'deposit', sessionId: c.sessionId, invoice: c.invoice });
      await refresh();
    } catch (err) {
      toast(problem(err), 'bad');
    }
  }

  async function topup(amount) {
    try {
      const { invoice } = await api('POST', `/sessions/${creds.id}/topup`, { body: { amount_sats: amount }, token: creds.token });
      store.set('invoice', { kind: 'topup', sessionId: creds.id, invoice });
      render();
      schedule();
    } catch (err) {
      toast(problem(err), 'bad');
    }
  }

  function forget() {
    creds = session = ledger = null;
    store.set('session', null);
    store.set('invoice', null);
    store.set('viewer', null);
    clearTimeout(timer);
    render();
    onChange?.(null);
  }

  function open(id, token) {
    creds = { id: id.trim(), token: token.trim() };
    store.set('session', creds);
    refresh();
  }

  function renderNew() {
    const amount = h('input', { type: 'number', value: '200', min: '1', step: '50', class: 'narrow', id: 'amount', 'aria-label': 'Deposit in sats' });
    const id = h('input', { placeholder: 'session id', id: 'import-id' });
    const token = h('input', { placeholder: 'sk_… token', id: 'import-token', type: 'password' });
    fill(
      card,
      h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Start a session')),
      h('p', { class: 'hint' }, 'A session is a prepaid balance: pay one Lightning invoice, then ask as often as it lasts. Each request holds an estimate and gives back what it did not use.'),
      h('div', { class: 'row' }, amount, h('span', { class: 'hint' }, 'sats'), h('span', { class: 'grow' }), button('Create session', () => create(Number(amount.value)), '', { id: 'create' })),
      h('details', {}, h('summary', {}, 'Open an existing session'), h('div', { class: 'row' }, id), h('div', { class: 'row' }, token), h('div', { class: 'row' }, button('Open', () => open(id.value, token.value), 'ghost'))),
    );
    ledgerCard.hidden = true;
  }

  function render() {
    if (!creds) return renderNew();
    if (!session) return fill(card, h('div', { class: 'empty' }, 'Loading the session…'));
    const p = pending();
    const top = h('input', { type: 'number', value: '500', min: '1', step: '100', class: 'narrow small', 'aria-label': 'Top-up in sats' });
    fill(
      card,
      h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Session'), badge(session.state)),
      h('div', { class: 'balance', id: 'balance', dataset: { sats: session.balanceSats } }, new Intl.NumberFormat('en-US').format(session.balanceSats), h('small', {}, 'sats')),
      h(
        'dl',
        { class: 'kv' },
        h('dt', {}, 'id'), h('dd', {}, h('span', { class: 'mono', id: 'session-id' }, session.sessionId), copyButton(session.sessionId)),
        h('dt', {}, 'token'), h('dd', {}, h('span', { class: 'mono' }, `${creds.token.slice(0, 6)}…`), copyButton(creds.token)),
        h('dt', {}, 'expires'), h('dd', {}, `${until(session.expiresAt)} without use`),
        h('dt', {}, 'created'), h('dd', {}, ago(session.createdAt)),
      ),
      p ? invoiceCard({ title: p.kind === 'deposit' ? 'Deposit invoice' : 'Top-up invoice', invoice: p.invoice, onPaid: refresh }) : null,
      h('div', { class: 'row' }, top, h('span', { class: 'hint' }, 'sats'), button('Top up', () => topup(Number(top.value)), 'ghost', { disabled: Boolean(p) }), h('span', { class: 'grow' }), button('Forget', forget, 'danger small', { title: 'Forget this session in this browser (the server keeps it)' })),
    );
    renderLedger();
  }

  function renderLedger() {
    if (!ledger) return;
    ledgerCard.hidden = false;
    const entries = [...ledger.entries].reverse();
    const sum = ledger.entries.reduce((a, e) => a + e.amountSats, 0);
    fill(
      ledgerCard,
      h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Ledger'), h('span', { class: 'hint' }, `${entries.length} entries`)),
      entries.length === 0
        ? h('div', { class: 'empty' }, 'No money has moved yet.')
        : h(
            'table',
            { class: 'list', id: 'ledger' },
            h('thead', {}, h('tr', {}, h('th', {}, 'what'), h('th', {}, 'run'), h('th', {}, 'when'), h('th', { class: 'num' }, 'sats'))),
            h(
              'tbody',
              {},
              entries.map((e) =>
                h(
                  'tr',
                  { dataset: { kind: e.kind } },
                  h('td', {}, e.kind),
                  h('td', {}, e.runId ? h('a', { href: '#', class: 'mono', onclick: (ev) => (ev.preventDefault(), onOpenRun?.(e.runId)) }, short(e.runId)) : h('span', { class: 'hint' }, e.paymentHash ? '⚡ lightning' : '')),
                  h('td', { class: 'hint' }, ago(e.createdAt)),
                  h('td', { class: `num ${e.amountSats >= 0 ? 'plus' : 'minus'}` }, signed(e.amountSats)),
                ),
              ),
            ),
          ),
      h('div', { class: 'sum' }, h('span', {}, 'sum of entries'), h('b', { id: 'ledger-sum' }, `${sats(sum)} ${sum === ledger.balanceSats ? '= balance ✓' : '≠ balance!'}`)),
    );
  }

  render();
  refresh();
  return {
    refresh,
    get creds() {
      return creds;
    },
    get session() {
      return session;
    },
  };
}
