export interface SseEvent {
  id?: string;
  event: string;
  data: any;
}

export interface SseResult {
  status: number;
  events: SseEvent[];
  /** Raw frames: `retry:` lines and `: ping` comments included. */
  raw: string;
}

/**
 * A minimal SSE reader over a real socket (fetch): reads until the server closes the stream, `until` says
 * stop, or `signal` aborts. Lets tests see exactly what went over the wire.
 */
export async function readSse(
  url: string,
  opts: { headers?: Record<string, string>; until?: (e: SseEvent, all: SseEvent[]) => boolean; signal?: AbortSignal; onEvent?: (e: SseEvent) => void } = {},
): Promise<SseResult> {
  const controller = new AbortController();
  opts.signal?.addEventListener('abort', () => controller.abort());
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...opts.headers }, signal: controller.signal });
  const events: SseEvent[] = [];
  let raw = '';
  if (!res.body || res.status !== 200) return { status: res.status, events, raw: await res.text().catch(() => '') };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const chunk = decoder.decode(value, { stream: true });
      raw += chunk;
      buf += chunk;
      let idx: number;
      while ((idx = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, idx);
        buf = buf.slice(idx + 2);
        const e = parseFrame(frame);
        if (!e) continue;
        events.push(e);
        opts.onEvent?.(e);
        if (opts.until?.(e, events)) {
          controller.abort();
          return { status: res.status, events, raw };
        }
      }
    }
  } catch (err) {
    if (!controller.signal.aborted) throw err;
  }
  return { status: res.status, events, raw };
}

function parseFrame(frame: string): SseEvent | null {
  let id: string | undefined;
  let event = 'message';
  const data: string[] = [];
  for (const line of frame.split('\n')) {
    if (line.startsWith(':') || line === '') continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'id') id = value;
    else if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return null;
  const text = data.join('\n');
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { id, event, data: parsed };
}

export const isFinal = (e: SseEvent) => e.event === 'done' || e.event === 'error';
export const tokensOf = (events: SseEvent[]) => events.filter((e) => e.event === 'token').map((e) => e.data.content as string);
export const idsOf = (events: SseEvent[]) => events.filter((e) => e.id !== undefined).map((e) => Number(e.id));
