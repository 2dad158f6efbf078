import type { Socket } from 'node:net';

/**
 * What Node's HTTP parser refuses before any route sees the request (a request line or headers past
 * `maxHeaderSize`, a malformed request, a header timeout) is answered here, in the face's error envelope, instead of
 * Node's bare status line: a client mistake is a clear 4xx with a body an SDK can read, like every other.
 *
 * The face is told from the request line's path, when the parser got that far (`rawPacket`: the bytes it held):
 * `/v1/…` gets OpenAI's envelope, everything else ours. The connection is closed after the answer (the parser's
 * state is lost), as Node's own handler does; a socket already gone is only destroyed.
 */
const REFUSALS: Record<string, { status: number; reason: string; code: string; message: string }> = {
  HPE_HEADER_OVERFLOW: { status: 431, reason: 'Request Header Fields Too Large', code: 'headers_too_large', message: 'the request line and headers are too large (16 KB at most): send long input in the body' },
  HPE_CHUNK_EXTENSIONS_OVERFLOW: { status: 413, reason: 'Payload Too Large', code: 'payload_too_large', message: 'the chunk extensions are too large' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, reason: 'Request Timeout', code: 'request_timeout', message: 'the request was not received in time' },
};
const BAD_REQUEST = { status: 400, reason: 'Bad Request', code: 'bad_request', message: 'the request is not valid HTTP/1.1' };

/** Sockets whose refusal is written or waiting: the parser is dead, and every later chunk would report it again. */
const refusing = new WeakSet<Socket>();

export function answerClientError(err: Error & { code?: string; rawPacket?: Buffer }, socket: Socket): void {
  if (refusing.has(socket)) return;
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  refusing.add(socket);
  const r = REFUSALS[err.code ?? ''] ?? BAD_REQUEST;
  const line = err.rawPacket?.subarray(0, 64).toString('latin1') ?? '';
  const openai = /^[A-Z]+ \/v1(\/|\?| |$)/.test(line);
  const body = JSON.stringify(
    openai
      ? { error: { message: r.message, type: 'invalid_request_error', param: null, code: r.code } }
      : { error: { code: r.code, message: r.message } },
  );
  // Destroyed once the answer is handed to the kernel: a peer that never closes its side holds nothing of ours.
  const refuse = () => {
    if (!socket.writable) return void socket.destroy();
    socket.end(
      `HTTP/1.1 ${r.status} ${r.reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      () => socket.destroy(),
    );
  };
  // A request before this one on the connection (pipelined, or a stream still open) has its response in flight
  // (`_httpMessage`): it goes out whole first, then the refusal. Node's own handler wrote over a response not yet
  // begun, so a paid POST followed by garbage lost its 202 (the debit stood, its run unknown to the client), and
  // destroyed one already begun.
  const inFlight = (socket as Socket & { _httpMessage?: { writableFinished?: boolean; once(e: 'finish', f: () => void): unknown } | null })._httpMessage;
  // Unless the refused bytes are the in-flight request's own body, cut short (the client half-closed before its
  // Content-Length): that request can never complete, so its answer would be waited for for ever. Its reader sees
  // it aborted, as when its client goes.
  const inFlightReq = (inFlight as { req?: { complete?: boolean } } | null | undefined)?.req;
  if (inFlightReq && !inFlightReq.complete) return void socket.destroy();
  if (inFlight && !inFlight.writableFinished) inFlight.once('finish', refuse);
  else refuse();
}
