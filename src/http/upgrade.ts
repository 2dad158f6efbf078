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
 */
export function routeUpgrades(server: http.Server, app: RequestListener): void {
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // A client that resets mid-handshake must not throw an unhandled error.
    socket.on('error', () => socket.destroy());
    pending.set(req, { socket, head });
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as never);
    res.once('finish', () => {
      // Answered over HTTP instead of upgraded: nothing more can be read from this socket; close it once written.
      pending.delete(req);
      res.detachSocket(socket as never);
      socket.end();
      socket.once('finish', () => socket.destroy());
    });
    app(req, res);
  });
}
