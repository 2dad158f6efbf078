/**
 * Is this error the database being unreachable (down, restarting, a dropped or refused connection, a pool with
 * nothing to give), as opposed to a statement the database refused? The first is weather: the same request may
 * succeed in a moment, so HTTP answers `503` with `Retry-After` and background work retries. The second is a bug
 * or a conflict and is handled where it happens.
 *
 * drizzle wraps driver errors (`DrizzleQueryError`, with the pg error as `cause`), Node wraps dual-stack connect
 * failures in an `AggregateError`: the whole chain is searched.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  const seen = new Set<unknown>();
  const visit = (e: unknown, depth: number): boolean => {
    if (!e || typeof e !== 'object' || depth > 8 || seen.has(e)) return false;
    seen.add(e);
    const { code, message, cause, errors } = e as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
    if (typeof code === 'string' && (UNAVAILABLE_CODES.has(code) || code.startsWith('08'))) return true;
    if (typeof message === 'string' && UNAVAILABLE_MESSAGES.some((m) => message.includes(m))) return true;
    if (Array.isArray(errors) && errors.some((x) => visit(x, depth + 1))) return true;
    return visit(cause, depth + 1);
  };
  return visit(err, 0);
}

const UNAVAILABLE_CODES = new Set([
  // SQLSTATE (class 08, connection exception, is matched by prefix)
  '57P01', // admin_shutdown: pg_terminate_backend, or a fast shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up or shutting down
  '57P05', // idle_session_timeout
  '53300', // too_many_connections
  // Node socket errors
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EMFILE',
  'ENFILE',
]);

/** What pg and pg-pool say when a connection is gone or cannot be had (they set no code). */
const UNAVAILABLE_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'is not queryable',
  'Cannot use a pool after calling end on the pool',
  'Query read timeout',
];
