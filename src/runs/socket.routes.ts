import { Router, type Request } from 'express';
import type { AppContext } from '../context.js';
import { bearerToken, tokenHashOf } from '../http/auth.js';
import { AppError } from '../http/errors.js';
import { takeUpgrade, upgradeOf } from '../http/upgrade.js';
import { createSessionNotices } from './session-notices.js';
import { serveSocket, type SocketDeps, type SocketSession } from './socket.js';

/**
 * `GET /api/ws`: the WebSocket door to the runs (socket.ts speaks its protocol). The upgrade request reaches this
 * route through the whole app (http/upgrade.ts), so it is logged, limited and authenticated like an SSE stream's:
 * a token on the upgrade (`?access_token=`, or `Authorization: Bearer` from a client that can send one) takes the
 * session's budget count and stream slot in its authenticating statement, and a bad one is refused over HTTP before
 * any socket exists. Without a token, the socket must authenticate with its first message.
 *
 * Limits, counted with the SSE streams': the socket is one of its client IP's SSE_MAX_STREAMS_PER_IP (this process)
 * and one of its session's SESSION_MAX_STREAMS (every process); it holds at most WS_MAX_SUBSCRIPTIONS subscriptions.
 */
export function socketRoutes(ctx: AppContext): Router {
  const r = Router();
  const notices = createSessionNotices(ctx.bus);
  const session = (req: Request, token: string, id: string): SocketSession => ({ sessionId: id, tokenHash: tokenHashOf(req, token) });
  const deps: SocketDeps = {
    ...ctx,
    notices,
    async authenticate(token, req) {
      ctx.limits.pendSocket(req, token);
      return session(req, token, (await ctx.sessions.authenticate(token, undefined, req)).id);
    },
    countMessage: (tokenHash) => ctx.limits.countMessage(tokenHash),
  };

  r.get('/ws', async (req, res) => {
    if (!upgradeOf(req)) {
      res.setHeader('Upgrade', 'websocket');
      throw new AppError(426, 'upgrade_required', 'GET /api/ws is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)');
    }
    if (!originAllowed(req, ctx.config.CORS_ORIGINS)) {
      throw new AppError(403, 'origin_not_allowed', 'pages of this origin may not open a WebSocket here (CORS_ORIGINS)', { origin: req.headers.origin });
    }
    const token = bearerToken(req, true);
    const pre = token ? session(req, token, (await ctx.sessions.authenticate(token, undefined, req)).id) : null;
    const release = ctx.streams.acquire(req.ip ?? req.socket.remoteAddress ?? 'unknown');
    if (!release) {
      const limit = ctx.config.SSE_MAX_STREAMS_PER_IP;
      throw new AppError(429, 'too_many_streams', `at most ${limit} streams may be open at once from one client; close one first`, { limit });
    }
    // From here the socket is ours: the response stays bound to it (its `close` ends the log line and gives the slot back).
    res.statusCode = 101;
    const peer = await ctx.sockets.accept(req, takeUpgrade(req)!);
    if (!peer) {
      // Not a valid WebSocket handshake (`ws` answered 400), or the server is shutting down (503): for the log line.
      release();
      res.statusCode = ctx.sockets.closing ? 503 : 400;
      return;
    }
    peer.ws.once('close', release);
    serveSocket(deps, peer, req, pre);
  });

  return r;
}

/**
 * A browser's page may open a socket from this server's own origin, or from one CORS_ORIGINS lets call the API; a
 * client that is not a browser sends no `Origin`. (Nothing ambient rides on a socket — it carries a token, never a
 * cookie — but a page another origin serves should reach the runs no further over a socket than over `fetch`.)
 */
function originAllowed(req: Request, origins: string[]): boolean {
  const origin = req.headers.origin;
  if (!origin || origins.includes('*') || origins.includes(origin)) return true;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}
