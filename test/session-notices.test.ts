import { EventEmitter } from 'eventemitter3';
import { describe, expect, it } from 'vitest';
import type { Bus, BusEvents } from '../src/bus.js';
import { createSessionNotices, type SessionNotice } from '../src/runs/session-notices.js';

/**
 * The notices of a run come by two paths that race: this process's own, told as its statement returns, and other
 * processes' NOTIFYs. Under load a worker's claim (`executing`) can be heard before the accept that queued the run
 * has returned to the API process (`queued`): a client must never see a run go backwards.
 */
describe('session notices', () => {
  it('drop a notice that would move a run backwards, and tell each state once', () => {
    const bus: Bus = new EventEmitter<BusEvents>();
    const notices = createSessionNotices(bus);
    const got: SessionNotice[] = [];
    notices.on('s1', (n) => got.push(n));
    bus.emit('run:state', { runId: 'r1', kind: 'session', sessionId: 's1', state: 'executing' }); // a worker's claim, heard first
    bus.emit('run:state', { runId: 'r1', kind: 'session', sessionId: 's1', state: 'queued' }); // our own accept, late
    bus.emit('run:queued', { runId: 'r1', sessionId: 's1' });
    bus.emit('session:request:complete', { sessionId: 's1', requestId: 'r1', state: 'complete' });
    bus.emit('run:state', { runId: 'r1', kind: 'session', sessionId: 's1', state: 'executing' });
    bus.emit('run:queued', { runId: 'r2', sessionId: 's1' });
    bus.emit('run:queued', { runId: 'r3', sessionId: 'another' });
    expect(got).toEqual([
      { runId: 'r1', state: 'executing' },
      { runId: 'r1', state: 'complete' },
      { runId: 'r2', state: 'queued' },
    ]);
  });
});
