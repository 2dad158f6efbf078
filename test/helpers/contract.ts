import { isDeepStrictEqual } from 'node:util';
import type { RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import type { Exchange } from '../testkit/client.js';

/**
 * Checks real exchanges against the OpenAPI document's route definitions (the zod schemas it was generated from):
 * the route and its status are documented, and the body (or every SSE frame) parses with the documented schema
 * *and* loses nothing by it — a field the document does not list is reported, so answers and document cannot
 * drift apart. Problems are collected (a flow is not cut short by the first); `problems` lists them.
 */
export function contractChecker(routes: Map<string, RouteConfig>) {
  const templates = [...routes.keys()].map((key) => {
    const [method, path] = key.split(' ') as [string, string];
    return { key, method, re: new RegExp(`^${path.replace(/\{[^}]+\}/g, '[^/]+')}$`) };
  });
  const problems: string[] = [];
  /** Documented operations, with the statuses seen. */
  const seen = new Map<string, Set<number>>();

  function check(x: Exchange): void {
    const path = x.path.split('?')[0]!;
    const t = templates.find((c) => c.method === x.method && c.re.test(path));
    if (!t) return void problems.push(`${x.method} ${path}: not in the document`);
    const at = `${t.key} → ${x.status}`;
    seen.set(t.key, (seen.get(t.key) ?? new Set()).add(x.status));
    const response = routes.get(t.key)!.responses[x.status] as { content?: Record<string, { schema?: unknown }> } | undefined;
    if (!response) return void problems.push(`${at}: status not documented`);
    const type = x.contentType?.split(';')[0]?.trim();
    if (!response.content) {
      if (x.body !== undefined || x.events?.length) problems.push(`${at}: documented without a body, but has one`);
      return;
    }
    const media = type ? response.content[type] : undefined;
    if (!media?.schema) return void problems.push(`${at}: content type ${type} not documented`);
    const schema = media.schema as z.ZodType;
    if (x.events) {
      for (const e of x.events) {
        const frame = { ...(e.id !== undefined ? { id: Number(e.id) } : {}), ...(e.event !== 'message' ? { event: e.event } : {}), data: e.data };
        const why = mismatch(schema, frame);
        if (why) problems.push(`${at}: frame ${JSON.stringify(frame).slice(0, 200)}: ${why}`);
      }
    } else {
      const why = mismatch(schema, x.body);
      if (why) problems.push(`${at}: ${why}`);
    }
  }

  return { check, problems, seen };
}

/** Why `value` does not conform to `schema` (null when it does): a parse failure, or what parsing dropped. */
export function mismatch(schema: z.ZodType, value: unknown): string | null {
  // A union parses as its first matching option, which may drop what a later one keeps: any option will do.
  if (schema instanceof z.ZodUnion) {
    const whys = (schema.options as z.ZodType[]).map((o) => mismatch(o, value));
    // None does: tell of the nearest (the one with the shortest complaint).
    return whys.includes(null) ? null : whys.sort((a, b) => a!.length - b!.length)[0]!;
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) return z.prettifyError(parsed.error).replaceAll('\n', ' ');
  return isDeepStrictEqual(parsed.data, value) ? null : `not described by the document: ${dropped(parsed.data, value, '').join(', ') || 'values differ'}`;
}

/** The paths of `actual` that `kept` lacks (fields the schema does not list). */
function dropped(kept: unknown, actual: unknown, at: string): string[] {
  if (!actual || typeof actual !== 'object' || !kept || typeof kept !== 'object') return [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(actual)) {
    const here = at ? `${at}.${k}` : k;
    if (!(k in kept)) out.push(here);
    else out.push(...dropped((kept as Record<string, unknown>)[k], v, here));
  }
  return out;
}
