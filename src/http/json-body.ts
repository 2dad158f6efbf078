import { AsyncResource } from 'node:async_hooks';
import { Readable } from 'node:stream';
import express, { type RequestHandler } from 'express';
import createError from 'http-errors';

/**
 * The JSON body parser: `express.json` (body-parser), with its common case read directly.
 *
 * Why: every POST of both faces comes through here before its first statement, and body-parser's general
 * machinery (type-is and content-type parsing, an iconv decoder, raw-body's stream state, on-finished) cost 40 µs
 * of a warm accept's 280 µs before its statement, and 80 µs on a server that had idled 20 ms (the
 * time-to-first-token benchmark), measured with marks on `bench/lib/profile-ttft.ts`.
 *
 * The common case is the body every client we know sends: `Content-Type: application/json` (with or without
 * `; charset=utf-8`), a `Content-Length` within the limit, no `Content-Encoding`, and an object or array that
 * parses. It is read, decoded as UTF-8 (a leading BOM dropped, as body-parser's decoder does) and parsed with
 * `JSON.parse`, which is what body-parser does with it. Everything else — another type or charset, compression,
 * chunked or empty bodies, a body over the limit, a body already read or being read, an upgrade, a request whose
 * client has gone — goes to body-parser untouched. So does a body that does not parse, or is not an object or
 * array: its bytes are handed to body-parser as they came, so its error (status, `type`, message) is body-parser's
 * own. test/json-body.test.ts checks both on the same inputs.
 */
export function jsonBody(limitBytes: number, general: RequestHandler = express.json({ limit: limitBytes })): RequestHandler {
  return (req, res, next0) => {
    const h = req.headers;
    const type = h['content-type'];
    const length = h['content-length'];
    if (
      (type !== 'application/json' && type?.toLowerCase() !== 'application/json; charset=utf-8') ||
      length === undefined ||
      h['transfer-encoding'] !== undefined ||
      (h['content-encoding'] !== undefined && h['content-encoding'].toLowerCase() !== 'identity') ||
      req.readableEnded ||
      req.readableFlowing !== null ||
      // body-parser's on-finished check (an upgrade, a socket already gone or ended) and raw-body's encoding check.
      (req as { upgrade?: boolean }).upgrade ||
      req.destroyed ||
      !req.socket?.readable ||
      req.readableEncoding !== null
    ) {
      return general(req, res, next0);
    }
    const expected = Number(length);
    if (!(expected > 0 && expected <= limitBytes)) return general(req, res, next0);
    // raw-body calls back in the caller's async context (AsyncLocalStorage); stream events do not.
    const next = AsyncResource.bind(next0);

    if (!('body' in (req as object))) req.body = undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onError);
      req.off('close', onError);
    };
    function onData(chunk: Buffer) {
      chunks.push(chunk);
      received += chunk.length;
    }
    function onError() {
      cleanup();
      req.pause();
      // The client went mid-body (Node's parser holds a body to its Content-Length, so nothing else errs here):
      // raw-body's error for it. Nobody is left to read the answer; the request's line says it was aborted.
      next(createError(400, 'request aborted', { code: 'ECONNABORTED', expected, length: expected, received, type: 'request.aborted' }));
    }
    function onEnd() {
      cleanup();
      const bytes = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
      let text = bytes.toString('utf8');
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return replay(bytes);
      }
      // body-parser (strict) takes only an object or an array; its refusal of anything else is its own to word.
      if (typeof body !== 'object' || body === null) return replay(bytes);
      req.body = body;
      next();
    }
    /** The same bytes through body-parser, for its error. */
    function replay(bytes: Buffer) {
      const copy = Object.assign(Readable.from([bytes]), { headers: h });
      general(copy as never, res, (err?: unknown) => {
        if (err) return next(err);
        req.body = (copy as unknown as { body: unknown }).body;
        next();
      });
    }
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onError);
    req.on('close', onError);
  };
}
