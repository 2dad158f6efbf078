// The API client of the console: JSON in and out, errors as the /api envelope {error: {code, message, details}}.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code ?? 'http_error';
    this.details = body?.error?.details;
    this.retryAfter = retryAfter ? Number(retryAfter) : undefined;
  }
}

export async function api(method, path, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(`/api${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    // No answer at all (offline, server down): status 0, which the panels wait out quietly.
    throw new ApiError(0, { error: { code: 'network', message: 'the server cannot be reached' } });
  }
  const text = res.status === 204 ? '' : await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) throw new ApiError(res.status, json, res.headers.get('retry-after'));
  return json;
}

/**
 * Pay an invoice with the stub provider's dev route (only on a development server). Resolves false when this
 * server has no stub wallet, so the page can say "pay it with a Lightning wallet" instead.
 */
export async function payWithStub(paymentHash) {
  try {
    await api('POST', `/dev/stub/pay/${paymentHash}`);
    return true;
  } catch (err) {
    if (err.status === 404 && /no route/.test(err.message)) return false;
    throw err;
  }
}

/** Remembered across reloads, per browser. */
export const store = {
  get(key, fallback = null) {
    try {
      return JSON.parse(localStorage.getItem(`sluice.${key}`)) ?? fallback;
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    if (value === null || value === undefined) localStorage.removeItem(`sluice.${key}`);
    else localStorage.setItem(`sluice.${key}`, JSON.stringify(value));
  },
};
