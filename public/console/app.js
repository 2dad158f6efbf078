// The Sluice console: a session (balance, ledger, runs, live output) and pay-per-job flows, on one page.
// Plain ES modules served by the API server itself: no build step, no CDN, nothing but this origin.
import { store } from './api.js';
import { createJobPanel } from './job.js';
import { createRunsPanel } from './runs.js';
import { createSessionPanel } from './session.js';
import { setConn } from './stream.js';

const $ = (id) => document.getElementById(id);
let tab = store.get('tab', 'session');

const runs = createRunsPanel({
  askCard: $('ask-card'),
  viewerCard: $('run-viewer'),
  listCard: $('runs-card'),
  session: () => sessions,
  onSpent: () => sessions.refresh(),
  active: () => tab === 'session',
});
const sessions = createSessionPanel({
  card: $('session-card'),
  ledgerCard: $('ledger-card'),
  onChange: (s) => runs.sessionChanged(s),
  onOpenRun: (runId) => runs.watch(runId),
});
createJobPanel({ newCard: $('job-new'), listCard: $('job-list'), flowCard: $('job-flow'), active: () => tab === 'job' });

function showTab(name) {
  tab = name;
  store.set('tab', name);
  for (const b of document.querySelectorAll('.tabs button')) b.setAttribute('aria-selected', String(b.dataset.tab === name));
  for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== name;
  // The indicator follows the panel in view; it updates on that panel's next change of state.
  setConn('idle', 'no stream');
  const line = document.querySelector(`#view-${name} .streamline`);
  if (line && line.dataset.state !== 'idle') setConn(line.dataset.state, line.dataset.state === 'ended' ? 'stream ended' : line.dataset.state);
}
for (const b of document.querySelectorAll('.tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));
window.addEventListener('offline', () => setConn('offline', 'offline'));
showTab(tab);
