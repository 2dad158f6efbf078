/**
 * An event rendered for the wire once, shared by every reader: its SSE frame, and the same frame as one HTTP/1.1
 * chunk (hex size line, frame, CRLF) that a chunked response's socket takes as it is. A thousand readers of a run
 * cost one `JSON.stringify` and one buffer per event, not a thousand.
 */
export class Frame {
  #chunk: Buffer | undefined;
  constructor(readonly text: string) {}

  /** The frame as a chunk of a `Transfer-Encoding: chunked` body (made on first use). */
  get chunk(): Buffer {
    if (!this.#chunk) {
      const len = Buffer.byteLength(this.text);
      const head = `${len.toString(16)}\r\n`;
      const b = Buffer.allocUnsafe(head.length + len + 2);
      b.write(head, 0, 'latin1');
      b.write(this.text, head.length, 'utf8');
      b.write('\r\n', head.length + len, 'latin1');
      this.#chunk = b;
    }
    return this.#chunk;
  }
}

/** The SSE frame of an event, for any id, event name and data (`raw` data is written as it is, not as JSON). */
export function sseText(id: number | undefined, event: string | undefined, data: unknown, raw = false): string {
  return `${id !== undefined ? `id: ${id}\n` : ''}${event ? `event: ${event}\n` : ''}data: ${raw ? String(data) : JSON.stringify(data)}\n\n`;
}
