import { createHash } from 'node:crypto';
import type pg from 'pg';

/**
 * The hot path's SQL: named (prepared) statements run with `pg` directly. Each connection parses and plans a named
 * statement once, then only binds and executes it; nothing builds SQL text per call (drizzle renders its query
 * builder on every call: the issue measured it at 17 % of the server's CPU). Every statement returns only the
 * columns its caller uses.
 *
 * A statement's name is derived from its text, so two texts can never share a name (pg refuses that per
 * connection) and a text built twice is one statement. Build the text once, at start-up or per variant, and keep it.
 */
export interface Statement {
  readonly name: string;
  readonly text: string;
}

export function statement(text: string): Statement {
  return { name: `s_${createHash('sha1').update(text).digest('hex').slice(0, 16)}`, text };
}

/** What runs a statement: the pool, or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

export function run<R extends pg.QueryResultRow = pg.QueryResultRow>(on: Queryable, st: Statement, values: unknown[]): Promise<pg.QueryResult<R>> {
  return on.query<R>({ name: st.name, text: st.text, values });
}

/**
 * A statement per variant, built once each: `variant` names the choices the text depends on (which parts are in),
 * `build` writes that text. For statements whose shape depends on a few flags.
 */
export function variants<K extends string>(build: (key: K) => string) {
  const built = new Map<K, Statement>();
  return (key: K): Statement => {
    let st = built.get(key);
    if (!st) built.set(key, (st = statement(build(key))));
    return st;
  };
}

/** A JSON timestamp as `Date.prototype.toISOString` writes it, from Postgres (both truncate to the millisecond). */
export const ISO_MS = `'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`;
