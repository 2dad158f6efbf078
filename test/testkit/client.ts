import assert from 'node:assert/strict';

/** A tiny HTTP client for the testkit: JSON in, JSON out, the status checked. */
export function client(baseUrl: string) {
  const base = baseUrl.replace(/\/$/, '');
  async function call(method: string, path: string, opts: { body?: unknown; token?: string; expect?: number } = {}) {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      },
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    const text = await res.text();
    const json = text ? JSON.parse(text) : undefined;
    if (opts.expect !== undefined) assert.equal(res.status, opts.expect, `${method} ${path}: ${res.status} ${text}`);
    return { status: res.status, body: json, headers: res.headers };
  }
  return {
    base,
    get: (path: string, opts?: Parameters<typeof call>[2]) => call('GET', path, opts),
    post: (path: string, opts?: Parameters<typeof call>[2]) => call('POST', path, opts),
    delete: (path: string, opts?: Parameters<typeof call>[2]) => call('DELETE', path, opts),
    /** Read an SSE stream to its end; returns the events as {id, event, data}. */
    async stream(path: string, headers: Record<string, string> = {}) {
      const res = await fetch(`${base}${path}`, { headers: { accept: 'text/event-stream', ...headers } });
      assert.equal(res.status, 200, `GET ${path}: ${res.status}`);
      const text = await res.text();
      return text
        .split('\n\n')
        .map((frame) => {
          const get = (f: string) => frame.split('\n').find((l) => l.startsWith(`${f}: `))?.slice(f.length + 2);
          const data = get('data');
          return data === undefined ? null : { id: get('id'), event: get('event') ?? 'message', data: JSON.parse(data) };
        })
        .filter((e): e is { id: string | undefined; event: string; data: any } => e !== null);
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
