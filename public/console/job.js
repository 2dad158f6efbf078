// A pay-per-request job, its whole flow: evaluation invoice → evaluation → work invoice → work (live) → result
// and costs → refund of what the work did not use.
import { api, store } from './api.js';
import { invoiceCard } from './invoice.js';
import { createViewer } from './viewer.js';
import { ago, badge, button, copyButton, fill, h, problem, sats, short, toast } from './ui.js';

const SAMPLE = 'Summarise the history of the water mill in a few lines [stub:tokens=40] [stub:delay=60]';
const RUN_STATES = new Set(['executing', 'complete', 'failed']);
const STEPS = ['Evaluation invoice', 'Evaluation', 'Work invoice', 'Work', 'Result and costs', 'Refund'];

export function createJobPanel({ newCard, listCard, flowCard, active }) {
  let jobs = store.get('jobs', []);
  let job = null;
  let timer = null;
  let streaming = null;
  const drawn = new Map();

  // The flow card: six steps drawn once, then updated in place (so the live viewer is never torn down).
  const head = h('h2', { class: 'grow' }, 'Job');
  const headState = h('span');
  const steps = STEPS.map((title, i) => {
    const mark = h('span', { class: 'mark' }, String(i + 1));
    const label = h('span', {}, title);
    const tag = h('span');
    const body = h('div', { class: 'body' });
    const li = h('li', { class: 'step todo', dataset: { step: String(i + 1) } }, mark, h('h3', {}, label, tag), body);
    return { li, mark, tag, body };
  });
  const viewerCard = h('div', { class: 'viewer', id: 'job-viewer' });
  const viewer = createViewer(viewerCard, { title: '', placeholder: 'The work streams here once its invoice is paid.', active, onEnd: () => job && load(job.jobId) });
  steps[3].body.append(viewerCard);
  const empty = h('div', { class: 'empty' }, 'Create a job: you pay a small invoice for its evaluation, then one for the work it quotes, and get back what the work did not use.');
  const flow = h('ol', { class: 'steps', hidden: true }, steps.map((s) => s.li));
  fill(flowCard, h('div', { class: 'card-head' }, head, headState), empty, flow);

  const text = h('textarea', { id: 'job-request', maxlength: 500, 'aria-label': 'Job request' }, SAMPLE);
  fill(
    newCard,
    h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Pay per job')),
    h('p', { class: 'hint' }, 'No account and no token: the job id is the capability. Pay per request with Lightning.'),
    text,
    h('div', { class: 'chips' }, h('span', { class: 'hint' }, 'try:'), ['[stub:reject]', '[stub:fail] [stub:tokens=20]'].map((d) => h('button', { class: 'chip', type: 'button', onclick: () => (text.value = `${text.value.replace(/\s*\[stub:[^\]]*\]/g, '')} ${d}`.trim()) }, d))),
    h('div', { class: 'row' }, h('span', { class: 'grow' }), button('Create job', create, '', { id: 'create-job' })),
  );

  async function create() {
    try {
      const j = await api('POST', '/jobs', { body: { request: text.value } });
      jobs = [{ id: j.jobId, request: j.request, createdAt: j.createdAt }, ...jobs.filter((x) => x.id !== j.jobId)].slice(0, 20);
      store.set('jobs', jobs);
      select(j.jobId, j);
    } catch (err) {
      toast(problem(err), 'bad');
    }
  }

  function select(id, known) {
    store.set('job', id);
    viewer.clear();
    streaming = null;
    drawn.clear();
    job = null;
    if (known) show(known);
    load(id);
    renderList();
  }

  async function load(id) {
    clearTimeout(timer);
    try {
      // GET /jobs/:id also asks the payment provider about the invoice it waits for.
      show(await api('GET', `/jobs/${id}`));
    } catch (err) {
      if (err.status === 404) {
        jobs = jobs.filter((x) => x.id !== id);
        store.set('jobs', jobs);
        store.set('job', null);
        job = null;
        flow.hidden = true;
        empty.hidden = false;
        renderList();
        return toast('That job is gone (it was never paid, or is past retention).');
      }
      if (err.status !== 429 && err.status !== 0) toast(problem(err), 'bad');
    }
    if (job && job.jobId === id) {
      const waiting = job.state.startsWith('awaiting') || job.state === 'evaluating';
      if (waiting || job.state === 'executing') timer = setTimeout(() => load(id), waiting ? 1000 : 2500);
    }
  }

  function show(j) {
    job = j;
    empty.hidden = true;
    flow.hidden = false;
    head.textContent = `Job · ${short(j.jobId)}`;
    fill(headState, badge(j.state));
    const s = j.state;
    const evalPaid = s !== 'awaiting_eval_payment';
    const quoted = Boolean(j.workInvoice);
    const workPaid = RUN_STATES.has(s);
    const cost = j.costLedger;

    step(0, evalPaid ? 'done' : 'current', evalPaid ? 'paid' : 'pending', `eval:${evalPaid}`, () =>
      invoiceCard({ title: 'Evaluation invoice', invoice: j.evalInvoice, status: evalPaid && s !== 'expired' ? 'paid' : j.evalInvoice.state, onPaid: () => load(j.jobId) }),
    );
    const expired = s === 'expired';
    step(1, s === 'rejected' || (expired && !quoted) ? 'bad' : s === 'evaluating' ? 'current' : quoted ? 'done' : 'todo', s === 'rejected' ? 'rejected' : expired && !quoted ? 'expired' : s === 'evaluating' ? 'evaluating' : quoted ? 'quoted' : '', `evaluation:${s}:${quoted}`, () =>
      s === 'rejected'
        ? h('p', {}, j.reason ?? 'The request was declined.', ' Nothing more is owed.')
        : expired && !quoted
          ? h('p', {}, j.reason ?? 'The evaluation invoice expired unpaid.', ' Nothing was taken; start a new job.')
          : s === 'evaluating'
            ? h('p', { class: 'hint' }, h('span', { class: 'spinner' }), ' The AI is sizing the work…')
            : j.pricingBreakdown
              ? pricing(j.pricingBreakdown)
              : null,
    );
    const workInvoiceState = workPaid ? 'paid' : j.workInvoice?.state ?? 'pending';
    step(2, workPaid ? 'done' : expired && quoted ? 'bad' : quoted ? 'current' : 'todo', quoted ? workInvoiceState : '', `work-invoice:${quoted}:${workInvoiceState}`, () =>
      quoted ? invoiceCard({ title: 'Work invoice', invoice: j.workInvoice, status: workInvoiceState, onPaid: () => load(j.jobId) }) : null,
    );
    const workState = s === 'executing' ? 'current' : s === 'complete' ? 'done' : s === 'failed' ? 'bad' : 'todo';
    mark(3, workState, workPaid ? s : '');
    viewerCard.hidden = !workPaid;
    if (workPaid && streaming !== j.jobId) {
      streaming = j.jobId;
      viewer.watch({ runId: j.jobId, state: s, url: `/api/jobs/${j.jobId}/stream` });
    }
    const ended = s === 'complete' || s === 'failed';
    step(4, ended ? (s === 'complete' ? 'done' : 'bad') : 'todo', ended ? s : '', `result:${s}`, () => (ended ? result(j) : null));
    const owed = cost?.refundAmountSats ?? 0;
    const refund = cost?.refundState;
    const look = !ended ? 'todo' : refund === 'pending' || refund === 'paying' ? 'current' : refund === 'failed' ? 'bad' : 'done';
    step(5, look, refund && ended ? refund.replaceAll('_', ' ') : '', `refund:${refund}:${owed}:${cost?.refundAttempts ?? 0}`, () => (ended ? refundBody(j, cost, owed) : null));
    // A payout under way is retried by the server; keep the page current until it settles.
    if (ended && refund === 'paying') timer = setTimeout(() => load(j.jobId), 2500);
  }

  /** What the refund step says: the form while it is owed, the payout's progress, or that it is settled. */
  function refundBody(j, cost, owed) {
    switch (cost?.refundState) {
      case 'pending':
        return refundForm(j, owed);
      case 'failed':
        return [h('p', { class: 'bad-text' }, `The payout failed for good${cost.refundLastError ? ` (${cost.refundLastError})` : ''}; ${sats(owed)} are still owed. Give a new invoice.`), ...refundForm(j, owed)];
      case 'paying':
        return h('p', { class: 'hint' }, h('span', { class: 'spinner' }), ` Paying ${sats(owed)} back… attempt ${cost.refundAttempts ?? 1}`,
          cost.refundOutcomeUnknown ? ' (outcome unknown: the node is asked, never paid twice)' : cost.refundLastError ? ` — last try: ${cost.refundLastError}` : '',
          cost.refundNextAttemptAt ? `; next try ${new Date(cost.refundNextAttemptAt).toLocaleTimeString()}` : '');
      case 'paid':
        return h('p', {}, `✓ ${sats(owed)} paid back · `, h('span', { class: 'mono' }, short(cost.refundPaymentHash)));
      default:
        return h('p', { class: 'hint' }, 'Nothing to give back: the work used all it was paid for.');
    }
  }

  /** Set a step's look, and redraw its body only when what it shows changed (`key`). */
  function step(i, look, tag, key, body) {
    mark(i, look, tag);
    if (drawn.get(i) === key) return;
    drawn.set(i, key);
    fill(steps[i].body, body());
  }

  function mark(i, look, tag) {
    const st = steps[i];
    st.li.className = `step ${look}`;
    st.mark.textContent = look === 'done' ? '✓' : look === 'bad' ? '!' : String(i + 1);
    fill(st.tag, tag ? badge(tag.replaceAll(' ', '_'), tag) : '');
  }

  const pricing = (p) =>
    h(
      'dl',
      { class: 'pricing' },
      [
        ['input tokens (est.)', p.estimatedInputTokens],
        ['output tokens (est.)', p.estimatedOutputTokens],
        ['input rate', `${p.inputRateSatsPer1k} sats/1k`],
        ['output rate', `${p.outputRateSatsPer1k} sats/1k`],
        ['fee', sats(p.feeSats)],
        ['work invoice', sats(p.workAmountSats)],
      ].map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, String(v)))),
    );

  function result(j) {
    const c = j.costLedger;
    return [
      j.state === 'failed' ? h('p', {}, j.errorMessage ?? 'The work failed.') : null,
      c
        ? h(
            'dl',
            { class: 'pricing', id: 'cost-ledger' },
            [
              ['tokens used', `${c.actualInputTokens} in + ${c.actualOutputTokens} out`],
              ['charged', sats(c.actualAmountSats)],
              ['work paid', sats(c.workAmountSats)],
              ['owed back', sats(c.refundAmountSats)],
            ].map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))),
          )
        : null,
      j.result ? h('div', { class: 'row' }, copyButton(j.result, 'Copy result')) : null,
    ];
  }

  function refundForm(j, owed) {
    const field = h('input', { placeholder: `a bolt11 invoice for exactly ${owed} sats`, id: 'refund-invoice', class: 'mono' });
    const claim = button(`Claim ${sats(owed)}`, async () => {
      claim.disabled = true;
      try {
        const payout = await api('POST', `/jobs/${j.jobId}/refund`, { body: { invoice: field.value.trim() } });
        toast(payout.state === 'paid' ? `${sats(owed)} paid back` : `The payout is under way (${payout.lastError ?? 'waiting on the node'}); it is retried, never paid twice`);
        load(j.jobId);
      } catch (err) {
        toast(problem(err), 'bad');
        claim.disabled = false;
      }
    }, '', { id: 'claim-refund' });
    // On a development server the stub plays your wallet too: it makes a real signed invoice for the amount owed.
    const stub = button('Make an invoice (stub wallet)', async () => {
      try {
        field.value = (await api('POST', '/dev/stub/wallet/invoice', { body: { amount_sats: owed, memo: `refund of job ${short(j.jobId)}` } })).paymentRequest;
      } catch (err) {
        toast(err.status === 404 ? 'This server has no stub wallet: paste an invoice from your Lightning wallet.' : problem(err), 'bad');
        stub.hidden = err.status === 404;
      }
    }, 'ghost small', { id: 'make-refund-invoice' });
    return [h('p', {}, `The work did not use ${sats(owed)}. Give an invoice for exactly that and it is paid back, once.`), field, h('div', { class: 'row' }, stub, h('span', { class: 'grow' }), claim)];
  }

  function renderList() {
    listCard.hidden = jobs.length === 0;
    const current = store.get('job');
    fill(
      listCard,
      h('div', { class: 'card-head' }, h('h2', { class: 'grow' }, 'Your jobs'), h('span', { class: 'hint' }, 'in this browser')),
      jobs.map((x) => h('div', { class: `job-item${x.id === current ? ' selected' : ''}`, onclick: () => select(x.id), dataset: { jobId: x.id } }, h('span', { class: 'mono' }, short(x.id)), h('span', { class: 'req' }, x.request), h('span', { class: 'hint' }, ago(x.createdAt)))),
    );
  }

  renderList();
  if (store.get('job')) select(store.get('job'));
  return { viewer };
}
