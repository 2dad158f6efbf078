import assert from 'node:assert/strict';

/** One request and its answer, as the testkit saw it (a stream's answer as its events). */
export interface Exchange {
  method: string;
  path: string;
  status: number;
  contentType: string | null;
  body?: unknown;
  events?: Array<{ id: string | undefined; event: string; data: unknown }>;
}

/**
 * A tiny HTTP client for the testkit: JSON in, JSON out, the status checked. `observe` sees every exchange (the
 * OpenAPI contract test checks them against the document).
 */
export function client(baseUrl: string, opts: { observe?: (x: Exchange) => void } = {}) {
  const base = baseUrl.replace(/\/$/, '');
  const observe = opts.observe ?? (() => {});
  async function call(method: string, path: string, opts: { body?: unknown; token?: string; expect?: number; headers?: Record<string, string> } = {}) {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...opts.headers,
      },
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    const text = await res.text();
    const json = text ? JSON.parse(text) : undefined;
    observe({ method, path, status: res.status, contentType: res.headers.get('content-type'), body: json });
    if (opts.expect !== undefined) assert.equal(res.status, opts.expect, `${method} ${path}: ${res.status} ${text}`);
    return { status: res.status, body: json, headers: res.headers };
  }
  return {
    base,
    get: (path: string, opts?: Parameters<typeof call>[2]) => call('GET', path, opts),
    post: (path: string, opts?: Parameters<typeof call>[2]) => call('POST', path, opts),
    delete: (path: string, opts?: Parameters<typeof call>[2]) => call('DELETE', path, opts),
    /** Read an SSE stream to its end (GET, or POST with `body`); returns the events as {id, event, data}. */
    async stream(path: string, headers: Record<string, string> = {}, body?: unknown) {
      const res = await fetch(`${base}${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        headers: { accept: 'text/event-stream', ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      assert.equal(res.status, 200, `${body === undefined ? 'GET' : 'POST'} ${path}: ${res.status}`);
      const text = await res.text();
      const events = text
        .split('\n\n')
        .map((frame) => {
          const get = (f: string) => frame.split('\n').find((l) => l.startsWith(`${f}: `))?.slice(f.length + 2);
          const data = get('data');
          if (data === undefined) return null;
          let parsed: unknown = data;
          try {
            parsed = JSON.parse(data);
          } catch {} // `[DONE]` ends a chat stream as plain text
          return { id: get('id'), event: get('event') ?? 'message', data: parsed as any };
        })
        .filter((e): e is { id: string | undefined; event: string; data: any } => e !== null);
      observe({ method: body === undefined ? 'GET' : 'POST', path, status: res.status, contentType: res.headers.get('content-type'), events });
      return events;
    },
  };
}

export type Client = ReturnType<typeof client>;

export async function poll<T>(fn: () => Promise<T | undefined | null | false>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`testkit: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
