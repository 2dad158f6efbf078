import { pino, type Logger, type LoggerOptions } from 'pino';
import { PinoPretty } from 'pino-pretty';
import type { Config } from './config.js';
import { safeLogOptions } from './log-safety.js';
import type { RunRow } from './runs/store.js';

/**
 * The process's logger: JSON lines for machines (the default off a terminal), or — on a terminal, or with
 * LOG_FORMAT=pretty — one coloured line per event that a person can read. Both carry the same fields; only
 * the rendering differs, so what a test or a log shipper sees is the JSON.
 */
export function createLogger(config: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT'>, opts: { isTTY?: boolean; destination?: NodeJS.WritableStream } = {}): Logger {
  // Redaction, the error serializer and the last scrub of every line apply to both renderings (log-safety.ts).
  const options: LoggerOptions = { level: config.LOG_LEVEL, base: { service: 'sluice' }, ...safeLogOptions() };
  const pretty = config.LOG_FORMAT === 'pretty' || (config.LOG_FORMAT === 'auto' && (opts.isTTY ?? process.stdout.isTTY === true));
  if (!pretty) return opts.destination ? pino(options, opts.destination) : pino(options);
  return pino(
    options,
    // In this thread (not a transport worker) so the line format can be a function; only used in development.
    PinoPretty({
      colorize: opts.destination ? false : (process.stdout.hasColors?.() ?? true),
      translateTime: 'SYS:HH:MM:ss.l',
      // The message format below renders the fields itself: one line per record (an error adds its stack).
      hideObject: true,
      messageFormat: prettyLine,
      ...(opts.destination ? { destination: opts.destination } : {}),
    }),
  );
}

/** The fields of a run's start and finish lines (besides its `runId`): who, what, how much, how long. */
export function runLogFields(run: RunRow) {
  const owner = run.sessionId ? { sessionId: run.sessionId } : run.jobId ? { jobId: run.jobId } : {};
  // The catalogue model (absent only on rows from before the catalogue); absent fields are left out of the line.
  const model = (run as { model?: string | null }).model ?? undefined;
  const base = { kind: run.kind, ...owner, ...(model ? { model } : {}) };
  if (run.state === 'queued' || run.state === 'executing') {
    const queuedMs = run.startedAt ? run.startedAt.getTime() - run.createdAt.getTime() : undefined;
    return { ...base, maxTokens: run.maxTokens, debitedSats: run.debitedSats, queuedMs };
  }
  const from = run.startedAt ?? run.createdAt;
  return {
    ...base,
    state: run.state,
    inputTokens: run.inputTokens,
    outputTokens: run.outputTokens,
    debitedSats: run.debitedSats,
    chargedSats: run.chargedSats,
    refundedSats: run.refundedSats,
    durationMs: run.completedAt ? run.completedAt.getTime() - from.getTime() : undefined,
    ...(run.error ? { errorCode: run.error.code } : {}),
  };
}

type Colors = { dim(s: string): string; bold(s: string): string; green(s: string): string; yellow(s: string): string; red(s: string): string };
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'service', 'req', 'res', 'responseTime', 'err']);
const short = (id: unknown) => (typeof id === 'string' ? id.slice(0, 8) : '?');

/** One readable line per log record; the rest of its fields as `key=value`, an error's stack below it. */
export function prettyLine(log: Record<string, unknown>, messageKey: string, _level: string, extras?: { colors: Colors }): string {
  const c = extras?.colors ?? identity;
  const msg = String(log[messageKey] ?? '');
  let line: string;
  let shown: Set<string>;
  const req = log.req as { id?: unknown; method?: string; url?: string } | undefined;
  const res = log.res as { statusCode?: number } | undefined;
  if (req && res) {
    const status = res.statusCode ?? 0;
    const paint = status >= 500 ? c.red : status >= 400 ? c.yellow : c.green;
    line = `${c.bold(req.method ?? '?')} ${req.url ?? ''} ${paint(String(status))} ${c.dim(`${log.responseTime ?? '?'} ms · req ${short(req.id)}`)}`;
    shown = new Set();
  } else if (msg === 'run started') {
    line = `${c.bold('▶ run')} ${short(log.runId)} ${owner(log)}${log.model ? ` ${log.model}` : ''} · up to ${log.maxTokens} tokens · ${log.debitedSats} sats held${log.queuedMs !== undefined ? c.dim(` · queued ${log.queuedMs} ms`) : ''}`;
    shown = new Set(['runId', 'kind', 'sessionId', 'jobId', 'model', 'maxTokens', 'debitedSats', 'queuedMs']);
  } else if (msg === 'run finished') {
    const paint = log.state === 'complete' ? c.green : log.state === 'failed' ? c.red : c.yellow;
    line =
      `${c.bold('■ run')} ${short(log.runId)} ${owner(log)}${log.model ? ` ${log.model}` : ''} ${paint(String(log.state))}` +
      ` · ${log.inputTokens}+${log.outputTokens} tokens · charged ${log.chargedSats} of ${log.debitedSats} sats, ${log.refundedSats} back` +
      `${log.durationMs !== undefined ? ` · ${log.durationMs} ms` : ''}${log.errorCode ? ` · ${c.red(String(log.errorCode))}` : ''}`;
    shown = new Set(['runId', 'kind', 'sessionId', 'jobId', 'model', 'state', 'inputTokens', 'outputTokens', 'debitedSats', 'chargedSats', 'refundedSats', 'durationMs', 'errorCode']);
  } else {
    line = msg;
    shown = new Set();
  }
  const rest = Object.entries(log)
    .filter(([k, v]) => !HIDDEN.has(k) && !shown.has(k) && k !== messageKey && v !== undefined)
    .map(([k, v]) => `${c.dim(`${k}=`)}${typeof v === 'string' ? v : JSON.stringify(v)}`);
  if (rest.length) line += ` ${rest.join(' ')}`;
  const err = log.err as { message?: string; stack?: string } | undefined;
  if (err) line += `\n    ${c.red(String(err.stack ?? err.message ?? JSON.stringify(err)).replaceAll('\n', '\n    '))}`;
  return line;
}

const owner = (log: Record<string, unknown>) => (log.sessionId ? `session ${short(log.sessionId)}` : log.jobId ? `job ${short(log.jobId)}` : String(log.kind));
const id = (s: string) => s;
const identity: Colors = { dim: id, bold: id, green: id, yellow: id, red: id };
