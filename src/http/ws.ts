import type { IncomingMessage } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import type { KeepAlive } from './sse.js';
import type { PendingUpgrade } from './upgrade.js';

/**
 * WebSockets on the app's own HTTP server and port, with the `ws` library: its handshake, framing, close and
 * ping/pong; permessage-deflate off (compressing each message per socket would undo what sharing one serialised
 * payload across a run's readers saves, and costs a zlib context per socket).
 *
 * Close codes the server uses: 1000 (done), 1001 (the server is shutting down: reconnect elsewhere or shortly),
 * 1008 (policy: no authentication in time), 1009 (a message over WS_MAX_MESSAGE_BYTES, by `ws`), 1011 (a server bug),
 * and 4401 / 4429 (an authentication the first message attempted was refused / a limit: the HTTP status + 4000).
 */
/** How long a closing socket may wait for its peer's close frame before it is dropped. */
export const CLOSE_GRACE_MS = 2_000;

export const CLOSE = { normal: 1000, goingAway: 1001, policy: 1008, tooBig: 1009, internal: 1011, unauthorized: 4401, limited: 4429 } as const;

export interface SocketHubOptions {
  /** The largest message a client may send (WS_MAX_MESSAGE_BYTES): `ws` closes the socket with 1009 past it. */
  maxMessageBytes: number;
  /** Bytes a socket may hold unread before its readers are behind (WS_MAX_BUFFERED_BYTES). */
  maxBufferedBytes: number;
  /** A paced write whose bytes are not taken by the peer within this long closes the socket (SSE_WRITE_TIMEOUT_MS). */
  writeTimeoutMs: number;
  /** The shared keep-alive sweep (http/sse.ts): every socket is pinged on it. */
  keepAlive(s: KeepAlive): () => void;
}

/**
 * An open WebSocket as the protocol uses it: send now, send paced, whether it is behind, liveness.
 *
 * Two ways to write, as for SSE. `send` (an answer) and `sendEvent` (a run's event) write at once (a shared payload
 * `Buffer` goes to the socket as it is: `ws` adds a 2–10 byte header and copies nothing). `sendPaced` writes and, while more than a quarter of
 * WS_MAX_BUFFERED_BYTES is waiting, waits until this message has left for the network: a replay from Postgres goes
 * at the pace the peer reads, and never fills the buffer by itself. Only writes that do not wait (live events of
 * caught-up readers) can push a socket past WS_MAX_BUFFERED_BYTES — and that is a reader falling behind.
 */
export class Peer implements KeepAlive {
  #alive = true;
  readonly #soft: number;
  /**
   * Bytes of messages each larger than WS_MAX_BUFFERED_BYTES, written and not yet taken by the kernel. One such
   * message (a final event carrying a long result) is not a client that sends and does not read: `flooded` leaves
   * them out, or a reader that sent anything while its long final event was on its way was cut. Only a run's events
   * (`sendEvent`, `sendPaced`) are counted here, never answers (`send`): those always count. How many can be in
   * flight stays bounded without it: a direct write needs the socket not `behind`, and a paced one waits for its
   * message to leave — at most one per subscription.
   *
   * Why it cannot drift: the count is raised in the same synchronous step as the write, and lowered by that write's
   * callback, which `ws` calls once — when the bytes have left `bufferedAmount`, or with an error when the socket is
   * gone.
   */
  #oversize = 0;
  constructor(
    readonly ws: WebSocket,
    readonly req: IncomingMessage,
    private readonly opts: Pick<SocketHubOptions, 'maxBufferedBytes' | 'writeTimeoutMs'>,
  ) {
    this.#soft = Math.max(1, Math.floor(opts.maxBufferedBytes / 4));
    ws.on('pong', () => (this.#alive = true));
  }

  /** Start reading messages, once their listener is attached (the handshake left the socket paused). */
  listen(): void {
    this.ws.resume();
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** More than WS_MAX_BUFFERED_BYTES is queued for the peer: it is not reading fast enough. */
  get behind(): boolean {
    return this.ws.bufferedAmount > this.opts.maxBufferedBytes;
  }

  /**
   * Twice WS_MAX_BUFFERED_BYTES unread: past the point where every subscription was dropped, only answers to the
   * client's own messages can pile up so far — it sends and does not read.
   */
  get flooded(): boolean {
    return this.ws.bufferedAmount - this.#oversize > 2 * this.opts.maxBufferedBytes;
  }

  /** Write one message now (a text frame): an answer to the client, counted whole against `flooded`. */
  send(data: Buffer | string): void {
    if (this.open) this.ws.send(data, { binary: false });
  }

  /** Write one of a run's events now: one larger than WS_MAX_BUFFERED_BYTES is left out of `flooded` while in flight. */
  sendEvent(data: Buffer | string): void {
    if (this.open) this.#write(data);
  }

  #write(data: Buffer | string, done?: () => void): void {
    const size = data.length;
    if (size <= this.opts.maxBufferedBytes) {
      this.ws.send(data, { binary: false }, done);
      return;
    }
    this.#oversize += size;
    this.ws.send(data, { binary: false }, () => {
      this.#oversize -= size;
      done?.();
    });
  }

  /** Write one event; resolves once the buffer is under the pacing mark again. False if the socket is gone. */
  sendPaced(data: Buffer | string): Promise<boolean> {
    if (!this.open) return Promise.resolve(false);
    if (this.ws.bufferedAmount + data.length <= this.#soft) {
      this.#write(data);
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      // A peer that keeps the socket open but takes nothing is cut, so its subscriptions and run entries are freed.
      const timer = setTimeout(() => this.ws.terminate(), this.opts.writeTimeoutMs);
      this.#write(data, () => {
        clearTimeout(timer);
        resolve(this.open);
      });
    });
  }

  /** The sweep: a peer that did not answer the last ping is dead (or its network is); the rest are pinged again. */
  ping(): void {
    if (!this.#alive) {
      this.ws.terminate();
      return;
    }
    this.#alive = false;
    if (this.open) this.ws.ping();
  }

  /**
   * Close with `code`, and let go of the connection within CLOSE_GRACE_MS whether or not the peer answers: `ws` waits
   * 30 s for the closing handshake, and a peer that reads nothing never answers — while it waits, the socket still
   * counts against its IP's streams and its session's.
   */
  close(code: number, reason: string): void {
    if (this.ws.readyState !== WebSocket.CONNECTING && this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.close(code, reason);
    const timer = setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS);
    this.ws.once('close', () => clearTimeout(timer));
  }
}

/**
 * Every WebSocket of this process: the handshake, the keep-alive, the count, and closing them all at shutdown.
 * A socket is in the set from its handshake to its `close`; the sweep pings it meanwhile.
 */
export function createSocketHub(opts: SocketHubOptions) {
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: opts.maxMessageBytes, clientTracking: false });
  const open = new Set<Peer>();
  let closing = false;

  return {
    /**
     * Complete the handshake of an upgrade request on its raw socket: the open peer, or null when the handshake is
     * not a valid WebSocket one (`ws` answered `400` and closed the socket) or the server is shutting down.
     */
    accept(req: IncomingMessage, upgrade: PendingUpgrade): Promise<Peer | null> {
      return new Promise((resolve) => {
        if (closing) {
          upgrade.socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
          return resolve(null);
        }
        const refused = () => resolve(null);
        upgrade.socket.once('close', refused);
        wss.handleUpgrade(req, upgrade.socket, upgrade.head, (ws) => {
          upgrade.socket.off('close', refused);
          // Nothing is read until the protocol listens (`Peer.listen`): bytes that came with the handshake (a client
          // that did not wait for the 101) are parsed on the next tick, before the awaiting route runs, and their
          // messages would be emitted to no listener — lost.
          ws.pause();
          const peer = new Peer(ws, req, opts);
          open.add(peer);
          const stop = opts.keepAlive(peer);
          ws.once('close', () => {
            open.delete(peer);
            stop();
          });
          resolve(peer);
        });
      });
    },

    /**
     * Shutdown: no new sockets; every open one is closed with 1001 (going away) and `reason`. Resolves once all have
     * closed, or after `graceMs` (then the rest are cut).
     */
    async closeAll(reason: string, graceMs = CLOSE_GRACE_MS): Promise<void> {
      closing = true;
      const waits = [...open].map((p) => new Promise<void>((resolve) => (p.ws.readyState === WebSocket.CLOSED ? resolve() : p.ws.once('close', () => resolve()))));
      for (const p of open) p.close(CLOSE.goingAway, reason);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(waits), new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
      for (const p of open) p.ws.terminate();
    },

    /** Shutting down: no new socket is accepted. */
    get closing() {
      return closing;
    },

    /** Open WebSockets. */
    get size() {
      return open.size;
    },
  };
}

export type SocketHub = ReturnType<typeof createSocketHub>;
