import pg from 'pg';
import type { Logger } from 'pino';
import type { Bus, BusEvents } from './bus.js';

/** The Postgres channel every Sluice process LISTENs on. */
export const BUS_CHANNEL = 'sluice_bus';

/** Events that cross processes. The others stay local (they name in-process things). */
const BRIDGED = ['run:finish', 'run:progress', 'run:queued', 'run:state', 'run:cancel', 'job:update', 'job:evaluate', 'invoice:settle'] as const satisfies ReadonlyArray<keyof BusEvents>;
type Bridged = (typeof BRIDGED)[number];
/** Bridged events whose NOTIFY is part of the statement that causes them: no round trip of their own. */
const SENT_BY_STATEMENTS = new Set<Bridged>(['run:progress', 'run:finish', 'run:queued', 'run:state', 'run:cancel']);

export interface BusBridge {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** The NOTIFY payload: who sent it (so a process ignores its own), which event, its payload. */
export function busMessage(origin: string, event: Bridged, payload: unknown): string {
  // (accept-statement.ts builds the same shape in SQL for `run:queued`, queue.ts for `run:state`: keep them alike.)
  return JSON.stringify({ o: origin, e: event, p: payload });
}

/**
 * Bridge the typed bus across processes with LISTEN/NOTIFY: what one process emits, every other process emits
 * too, so a stream or a waiting job on process B wakes the moment process A settles a payment or flushes a
 * token — no sleeping poll. Postgres stays the truth: a notification only says "look again"; one lost (a
 * dropped connection) costs a poll interval, never an event, and the listener reconnects by itself.
 */
export function createBusBridge(deps: { connectionString: string; bus: Bus; origin: string; log: Logger; notify: (payload: string) => Promise<unknown> }): BusBridge {
  const { bus, origin, log } = deps;
  let client: pg.Client | null = null;
  let stopped = false;
  let relaying = false;
  let retry: NodeJS.Timeout | null = null;
  const forwarders = new Map<Bridged, (payload: never) => void>();

  /** How our own messages begin (busMessage): they are dropped unparsed — every process hears its own NOTIFYs. */
  const own = `{"o":${JSON.stringify(origin)},`;
  function onNotification(msg: pg.Notification) {
    if (msg.channel !== BUS_CHANNEL || !msg.payload || msg.payload.startsWith(own)) return;
    let m: { o?: string; e?: Bridged; p?: unknown };
    try {
      m = JSON.parse(msg.payload);
    } catch {
      return;
    }
    if (m.o === origin || !m.e || !BRIDGED.includes(m.e)) return;
    // Emitting a remote event must not send it back out.
    relaying = true;
    try {
      (bus.emit as (e: string, p: unknown) => boolean)(m.e, m.p);
      // A session run's end is also its request's completion: one NOTIFY per finish carries both (finish.ts).
      if (m.e === 'run:finish') {
        const f = m.p as Parameters<BusEvents['run:finish']>[0];
        if (f.kind === 'session' && f.sessionId) bus.emit('session:request:complete', { sessionId: f.sessionId, requestId: f.runId, state: f.state });
      }
    } finally {
      relaying = false;
    }
  }

  async function connect(): Promise<void> {
    // Bounded, like the pool's: a dead server must fail the attempt (and retry), not hang it.
    const c = new pg.Client({ connectionString: deps.connectionString, connectionTimeoutMillis: 5_000, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    c.on('notification', onNotification);
    c.on('error', (err) => {
      log.warn({ err }, 'bus listener lost its connection; reconnecting');
      scheduleReconnect();
    });
    await c.connect();
    await c.query(`listen ${BUS_CHANNEL}`);
    client = c;
  }

  function scheduleReconnect() {
    const old = client;
    client = null;
    old?.end().catch(() => {});
    if (stopped || retry) return;
    retry = setTimeout(() => {
      retry = null;
      connect().catch((err) => {
        log.warn({ err }, 'bus listener could not reconnect; retrying');
        scheduleReconnect();
      });
    }, 1000);
    retry.unref();
  }

  return {
    async start() {
      stopped = false;
      await connect();
      for (const event of BRIDGED) {
        // These are announced by the statements that cause them (store.appendTokens, runs/finish.ts); the rest here.
        if (SENT_BY_STATEMENTS.has(event)) continue;
        const forward = (payload: never) => {
          if (relaying) return;
          deps.notify(busMessage(origin, event, payload)).catch((err) => log.warn({ err, event }, 'NOTIFY failed'));
        };
        forwarders.set(event, forward);
        bus.on(event, forward as never);
      }
    },
    async stop() {
      stopped = true;
      if (retry) clearTimeout(retry);
      for (const [event, forward] of forwarders) bus.off(event, forward as never);
      forwarders.clear();
      const c = client;
      client = null;
      await c?.end().catch(() => {});
    },
  };
}
