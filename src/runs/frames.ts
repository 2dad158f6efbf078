import { Frame, sseText } from '../http/frame.js';
import type { RunEvent } from './registry.js';

export { Frame };

const NATIVE = Symbol('sluice.frame');
type Framed = RunEvent & { [NATIVE]?: Frame; [k: symbol]: Frame | null | undefined };

/** The native (`/api`) frame of a run event: `id: seq`, `event: type`, its data as JSON. Made once per event. */
export function nativeFrame(e: RunEvent): Frame {
  const f = e as Framed;
  return (f[NATIVE] ??= new Frame(sseText(e.seq, e.type, e.data)));
}

/**
 * Another face's frame of a run event, made once per event and kept on it under `key` (one symbol per face): a
 * face whose stream is a pure function of the log (the Responses stream) renders each event once for all its
 * readers. `render` returns null for an event that has no frame of its own in that face.
 */
export function faceFrame(e: RunEvent, key: symbol, render: (e: RunEvent) => string | null): Frame | null {
  const f = e as Framed;
  let frame = f[key];
  if (frame === undefined) {
    const text = render(e);
    f[key] = frame = text === null ? null : new Frame(text);
  }
  return frame;
}

/**
 * About what an event costs in memory once rendered: its frame's text (one byte a character for ASCII), the chunk
 * made from it, and the objects around them. The memory tier budgets in these (RUN_MEMORY_MAX_BYTES).
 */
export const eventBytes = (e: RunEvent) => 2 * nativeFrame(e).text.length + 160;
