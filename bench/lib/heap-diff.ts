/**
 * What an idle SSE stream holds, by kind of heap object: two heap snapshots of a bench server (after 200 streams
 * opened and closed, then with N idle readers of one live run), their difference per reader, the largest first.
 *   node .bench-build/bench/lib/heap-diff.js [N=2000]
 * (`self size` only: what each kind of object weighs itself, not what it keeps alive.)
 */
import { readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { jsonClient, paidSession, readSse, type SseReader } from './client.js';
import { startBenchPostgres } from './pg.js';
import { startBenchServer } from './server.js';
import { sleep } from './stats.js';

const N = Number(process.argv[2] ?? 2000);
const STREAMS = { SESSION_MAX_STREAMS: 0, SESSION_RATE_LIMIT_PER_MIN: 0, SSE_MAX_STREAMS_PER_IP: 100_000, SESSION_CREATE_RATE_LIMIT: 0 };
const pgs = await startBenchPostgres();
const url = await pgs.freshDatabase('b_heap');
const server = await startBenchServer(url, STREAMS, 'server-child', { heapFlags: [] });
function summarize(file: string) {
  const snap = JSON.parse(readFileSync(file, 'utf8'));
  const f = snap.snapshot.meta.node_fields as string[];
  const types = snap.snapshot.meta.node_types[0] as string[];
  const nf = f.length;
  const nodes = snap.nodes as number[];
  const strings = snap.strings as string[];
  const out = new Map<string, { n: number; size: number }>();
  for (let i = 0; i < nodes.length; i += nf) {
    const type = types[nodes[i + f.indexOf('type')]!]!;
    let name = strings[nodes[i + f.indexOf('name')]!]!;
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string') name = '(string)';
    if (type === 'code') name = '(code)';
    if (type === 'closure') name = `closure ${name}`;
    const k = `${type}:${name.slice(0, 60)}`;
    const e = out.get(k) ?? { n: 0, size: 0 };
    e.n++;
    e.size += nodes[i + f.indexOf('self_size')]!;
    out.set(k, e);
  }
  return out;
}
try {
  const c = jsonClient(server.url, 8);
  const s = await paidSession(c, 10_000);
  const r = await c.request('POST', `/api/sessions/${s.id}/request`, { request: 'idle [bench:gate] [stub:tokens=1]', max_tokens: 1 }, s.auth);
  const path = `/api/sessions/${s.id}/requests/${r.body.requestId}/stream`;
  const open = async (n: number) => {
    const out: SseReader[] = [];
    for (let i = 0; i < n; i += 100) { const b = Array.from({ length: Math.min(100, n - i) }, () => readSse(server.url, path, s.auth, { keepArrivals: false })); await Promise.all(b.map((x) => x.opened)); out.push(...b); }
    return out;
  };
  const warm = await open(200);
  await sleep(300);
  warm.forEach((x) => x.close());
  await sleep(500);
  const a = await server.call<string>('heap', { path: join(os.tmpdir(), `sluice-heap-a-${process.pid}.heapsnapshot`) });
  const readers = await open(N);
  await sleep(800);
  const b = await server.call<string>('heap', { path: join(os.tmpdir(), `sluice-heap-b-${process.pid}.heapsnapshot`) });
  const A = summarize(a), B = summarize(b);
  const rows = [...B].map(([k, v]) => [k, (v.n - (A.get(k)?.n ?? 0)) / N, (v.size - (A.get(k)?.size ?? 0)) / N] as const).filter((x) => Math.abs(x[2]) > 8).sort((x, y) => y[2] - x[2]);
  let total = 0;
  for (const [, , sz] of rows) total += sz;
  console.log(`per reader: ${total.toFixed(0)} B self size in rows shown`);
  for (const [k, n, sz] of rows.slice(0, 60)) console.log(`${sz.toFixed(0).padStart(6)} B ${n.toFixed(2).padStart(6)}×  ${k}`);
  readers.forEach((x) => x.close());
  c.close();
  rmSync(a);
  rmSync(b);
} finally {
  await server.kill();
  await pgs.stop();
}
