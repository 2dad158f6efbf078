/**
 * Python's `json.dumps(value)` with its defaults (`separators=(', ', ': ')`, `ensure_ascii=True`), byte for
 * byte: what pydantic v1's `.json()` and httpx 0.27's `json=` produce, so the fake LNbits's webhook bodies are
 * exactly LNbits's.
 */
export function pyDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    // Integers print alike in both languages; LNbits's payments hold no floats (Python's float repr differs).
    if (!Number.isInteger(value)) throw new Error('pyDumps: only integers are supported');
    return String(value);
  }
  if (typeof value === 'string') return pyString(value);
  if (Array.isArray(value)) return `[${value.map(pyDumps).join(', ')}]`;
  if (typeof value === 'object') {
    return `{${Object.entries(value as Record<string, unknown>)
      .map(([k, v]) => `${pyString(k)}: ${pyDumps(v)}`)
      .join(', ')}}`;
  }
  throw new Error(`pyDumps: cannot encode ${typeof value}`);
}

/** A JSON string with every character outside printable ASCII escaped as \uXXXX (UTF-16 units), as Python does. */
function pyString(s: string): string {
  return JSON.stringify(s).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Python's `datetime.isoformat()` of an aware UTC datetime: microseconds (omitted when zero) and `+00:00`. */
export function pyIsoformat(d: Date): string {
  const iso = d.toISOString();
  const ms = d.getUTCMilliseconds();
  return ms === 0 ? iso.replace(/\.\d{3}Z$/, '+00:00') : iso.replace(/\.(\d{3})Z$/, '.$1000+00:00');
}
