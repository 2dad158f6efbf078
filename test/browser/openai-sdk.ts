/// <reference lib="dom" />
import assert from 'node:assert/strict';
import http from 'node:http';
import esbuild from 'esbuild';
import { until, type Harness } from './harness.js';

/**
 * The unmodified `openai` SDK in a page on another origin (`dangerouslyAllowBrowser`), against `/v1` through CORS:
 * every header it sends must pass the preflight, and the headers it acts on (`x-should-retry`, `x-request-id`)
 * must be readable, or it retries what it must not. The SDK is bundled for the browser from our own node_modules
 * (esbuild, which tsx already brings): no CDN.
 */
const PAGE = `<!doctype html><meta charset="utf-8"><title>the openai SDK on another origin</title>
<body><h1>The openai SDK on another origin</h1><pre id="out"></pre><script type="module">
import OpenAI from '/openai.js';
const api = new URLSearchParams(location.search).get('api');
window.result = { failure: null, done: false };
const sent = [];
const counting = (url, init) => { sent.push((init?.method ?? 'GET') + ' ' + new URL(String(url)).pathname); return fetch(url, init); };
try {
  const post = (path, body) => fetch(api + '/api' + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.json());
  const s = await post('/sessions', { amount_sats: 500 });
  await post('/dev/stub/pay/' + s.invoice.paymentHash, {});
  const client = new OpenAI({ baseURL: api + '/v1', apiKey: s.sessionToken, dangerouslyAllowBrowser: true, maxRetries: 2, fetch: counting });
  const r = await client.responses.create({ model: 'sluice-stub', input: 'from afar [stub:tokens=5]' });
  window.result.text = r.output_text;
  window.result.requestId = r._request_id;
  const streamed = await client.responses.stream({ model: 'sluice-stub', input: 'streamed [stub:tokens=6] [stub:delay=5]' }).finalResponse();
  window.result.streamed = streamed.output_text;
  let chat = '';
  for await (const c of await client.chat.completions.create({ model: 'sluice-stub', messages: [{ role: 'user', content: 'chat [stub:tokens=4]' }], stream: true })) chat += c.choices[0]?.delta?.content ?? '';
  window.result.chat = chat;
  // A 409 the SDK would retry twice, were x-should-retry unreadable here.
  const conv = await client.conversations.create({});
  await client.responses.create({ model: 'sluice-stub', input: 'busy [stub:tokens=100] [stub:delay=20]', conversation: conv.id, background: true });
  const before = sent.length;
  const busy = await client.responses.create({ model: 'sluice-stub', input: 'second', conversation: conv.id }).catch((e) => e);
  window.result.busy = { name: busy.constructor.name, status: busy.status, code: busy.code, attempts: sent.length - before };
} catch (err) {
  window.result.failure = String(err?.stack ?? err);
}
window.result.done = true;
document.getElementById('out').textContent = JSON.stringify(window.result, null, 2);
</script>`;

export async function openAiSdkPage(h: Harness, origin: string, log: (msg: string) => void) {
  const bundle = await esbuild.build({
    stdin: { contents: "export { default } from 'openai';", resolveDir: process.cwd(), loader: 'js' },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    logLevel: 'error',
  });
  const sdk = bundle.outputFiles[0]!.text;
  const server = http.createServer((req, res) => {
    if (req.url === '/openai.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(sdk);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise<void>((resolve) => server.listen(Number(new URL(origin).port), '127.0.0.1', resolve));
  try {
    const page = await h.browser.newPage();
    const said: string[] = [];
    page.on('console', (msg) => said.push(`${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => said.push(`page error: ${err.message}`));
    await page.goto(`${origin}/?api=${encodeURIComponent(h.server.url)}`);
    await until(page, () => (window as any).result?.done === true, 'the SDK calls from the other origin', 30_000).catch((err) => {
      throw new Error(`${(err as Error).message}; the page said: ${said.join(' | ')}`);
    });
    const result = await page.evaluate(() => (window as any).result);
    assert.equal(result.failure, null, `the openai SDK works from another origin: ${result.failure}`);
    assert.equal(result.text.split(' ').length, 5);
    assert.equal(result.streamed.split(' ').length, 6);
    assert.equal(result.chat.split(' ').length, 4);
    assert.match(result.requestId, /^[\w-]+$/, 'x-request-id is readable (the SDK’s _request_id)');
    assert.deepEqual(result.busy, { name: 'ConflictError', status: 409, code: 'conversation_busy', attempts: 1 }, 'a 409 with x-should-retry: false is not retried');
    await page.close();
    log(`openai SDK: ${origin} used the unmodified SDK against /v1 (create, stream helper, chat stream); a 409 was asked once, not retried`);
  } finally {
    server.close();
  }
}
