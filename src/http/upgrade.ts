import http, { type IncomingMessage, type RequestListener } from 'node:http';
import type { Duplex } from 'node:stream';

/** An upgrade request's raw connection, handed over by Node's `upgrade` event: the socket and the bytes read past the headers. */
export interface PendingUpgrade {
  socket: Duplex;
  head: Buffer;
}

const pending = new WeakMap<IncomingMessage, PendingUpgrade>();

/** The connection of a request that asked to be upgraded (`Upgrade:` header), while it has not been taken; else undefined. */
export function upgradeOf(req: IncomingMessage): PendingUpgrade | undefined {
  return pending.get(req);
}

/** Take the connection of an upgrade request (once): from now on the caller owns the socket. */
export function takeUpgrade(req: IncomingMessage): PendingUpgrade | undefined {
  const u = pending.get(req);
  pending.delete(req);
  return u;
}

/** A request asking for a WebSocket (`Upgrade: websocket`): the one protocol this server upgrades to. */
const wantsWebSocket = (req: IncomingMessage) => /^websocket$/i.test(req.headers.upgrade ?? '');

/**
 * Every request that asks for a protocol upgrade goes through the app like any other request — request id and log
 * line, trust proxy, CORS, the session's budget count and stream slot, authentication, the error envelope — and a
 * route that speaks the protocol (`GET /api/ws`) takes the raw connection with `takeUpgrade`. One path for every
 * request, so a WebSocket is limited, logged and refused exactly as an SSE stream is.
 *
 * Node hands an upgrade request to the `upgrade` event with the socket detached from its HTTP parser, not to the app.
 * So the app gets a response bound to that socket: whatever a route answers (a 401, a 404, a 426 for a route that
 * does not upgrade) is written to it as a plain HTTP response, and the socket is closed after it — there is no parser
 * left to read another request from it. A route that upgrades never ends that response: it stays bound to the socket
 * and emits `close` when the socket closes, which is when the request log line is written and the stream slot is given
 * back, as for a stream.
 *
 * Any other protocol (curl's `--http2` offers `Upgrade: h2c` on plain HTTP, even with a body) is answered as the
 * HTTP/1.1 request it also is, as before this listener existed — an upgrade is only an offer (RFC 9110 §7.8). Node has
 * left its body unread in the socket, so the app gets a copy of the request that reads its `Content-Length` bytes
 * from there; a chunked body cannot be read without the parser, and is refused with a 400 that says why.
 */
export function routeUpgrades(server: http.Server, app: RequestListener, Response: typeof http.ServerResponse = http.ServerResponse): void {
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // A client that resets mid-handshake must not throw an unhandled error.
    socket.on('error', () => socket.destroy());
    let request = req;
    if (wantsWebSocket(req)) pending.set(req, { socket, head });
    else if (req.headers['transfer-encoding']) {
      const body = JSON.stringify({ error: { code: 'invalid_request', message: `a chunked body cannot come with Upgrade: ${req.headers.upgrade}; send the request without the Upgrade header` } });
      socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      return;
    } else if (Number(req.headers['content-length'] ?? 0) > 0) request = withBodyFrom(req, socket, head);
    // The server's own response class (server.ts: born with the app's prototype, so a WebSocket's shares its shape).
    const res = new Response(request);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as never);
    res.once('finish', () => {
      // Answered over HTTP instead of upgraded: nothing more can be read from this socket; close it once written.
      pending.delete(req);
      res.detachSocket(socket as never);
      socket.end();
      socket.once('finish', () => socket.destroy());
    });
    app(request, res);
  });
}

/** A copy of `req` whose body is the `Content-Length` bytes that follow its headers in the raw socket. */
function withBodyFrom(req: IncomingMessage, socket: Duplex, head: Buffer): IncomingMessage {
  const copy = new http.IncomingMessage(socket as never);
  Object.assign(copy, {
    method: req.method,
    url: req.url,
    httpVersion: req.httpVersion,
    httpVersionMajor: req.httpVersionMajor,
    httpVersionMinor: req.httpVersionMinor,
    rawHeaders: req.rawHeaders,
    headers: req.headers,
  });
  let left = Number(req.headers['content-length']);
  const feed = (chunk: Buffer) => {
    const part = chunk.subarray(0, left);
    left -= part.length;
    if (part.length > 0) copy.push(part);
    if (left > 0) return;
    socket.off('data', feed);
    copy.complete = true;
    copy.push(null);
  };
  feed(head);
  if (left > 0) socket.on('data', feed);
  return copy;
}
