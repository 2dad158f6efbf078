/**
 * The limit of the socket: a bare Node HTTP server that holds SSE responses open and, on the parent's word, writes
 * the same pre-rendered chunk to every one of them `events` times, `everyMs` apart, then ends them — what a fan-out
 * costs with nothing but the socket writes. Its CPU per event per reader is the fan-out benchmark's baseline.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { settledMemory } from './settled-memory.js';

/** The responses held open; one whose client went is forgotten, as any server would (the memory benchmark warms up). */
const open = new Set<{ res: http.ServerResponse; socket: Socket }>();
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  req.socket.setNoDelay(true);
  const o = { res, socket: req.socket };
  open.add(o);
  res.once('close', () => open.delete(o));
});
server.listen(0, '127.0.0.1', () => process.send?.({ event: 'ready', port: (server.address() as { port: number }).port }));

function chunk(seq: number, last: boolean): Buffer {
  const text = `id: ${seq}\nevent: ${last ? 'done' : 'token'}\ndata: ${JSON.stringify({ content: ' sluice' })}\n\n`;
  return Buffer.from(`${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`);
}

process.on('message', (m: { id: number; cmd: string; args?: { events: number; everyMs: number } }) => {
  const reply = (result: unknown) => process.send?.({ id: m.id, result });
  if (m.cmd === 'cpu') {
    const u = process.cpuUsage();
    return reply({ cpuMs: (u.user + u.system) / 1000 });
  }
  if (m.cmd === 'count') return reply(open.size);
  if (m.cmd === 'gc') {
    void settledMemory().then(reply);
    return;
  }
  if (m.cmd === 'go') {
    const { events, everyMs } = m.args!;
    let seq = 0;
    const tick = () => {
      seq++;
      const c = chunk(seq, seq === events);
      for (const o of open) o.socket.write(c);
      if (seq < events) setTimeout(tick, everyMs);
      else {
        for (const o of open) o.res.end();
        open.clear();
        reply(true);
      }
    };
    tick();
    return;
  }
  if (m.cmd === 'quit') {
    server.close();
    reply(true);
    setTimeout(() => process.exit(0), 20);
  }
});
