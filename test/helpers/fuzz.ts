import fc from 'fast-check';

/** What both faces' fuzzers throw (test/fuzz.test.ts for /api, test/fuzz-v1.test.ts for /v1). */

/** Values of every JSON type, and the edge cases of each. */
export const value = fc.oneof(
  fc.integer(),
  fc.constantFrom(0, -1, 1, 99, 100, 256, 10_000, 10_001, 4_096, 4_097, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -1e-308, 0.5, -0),
  fc.double(),
  fc.string(),
  fc.string({ unit: 'binary' }), // lone surrogates and every code point
  fc.constantFrom('', ' ', '\u0000', 'a\u0000b', '\ud800', '0', '1e3', '12abc', 'null', 'true', '[stub:tokens=1]', 'x'.repeat(9_000), 'resp_', 'conv_'),
  fc.constant(null),
  fc.boolean(),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
);

/** A header value that HTTP can carry (printable ASCII). */
export const headerValue = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 60 });

/** An `Idempotency-Key` header, or none (most cases): a valid key or garbage. */
export const idempotencyKey = fc.option(fc.oneof(fc.string({ maxLength: 20 }).map((v) => v.replace(/[^\x21-\x7e]/g, '') || 'k'), headerValue), { nil: undefined, freq: 2 });

/** A query string: the keys a route reads and others, any values, keys repeated. */
export function queryOf(keys: [string, ...string[]]): fc.Arbitrary<string> {
  return fc
    .array(fc.tuple(fc.oneof(fc.constantFrom(...keys), fc.string({ maxLength: 8 })), fc.oneof(fc.string(), value.map((v) => (typeof v === 'string' ? v : (JSON.stringify(v) ?? ''))))), { maxLength: 5 })
    .map((pairs) => {
      const q = new URLSearchParams();
      for (const [k, v] of pairs) q.append(k, v);
      return q.toString();
    });
}

/**
 * A JSON body that is valid but for a field nested absurdly deep (JSON.parse takes it; a recursive walk may not):
 * `fields` (a JSON object's members, without braces) then `"junk"` nested `depth` levels of arrays or objects.
 */
export function nestedBody(fields: string, maxDepth: number): fc.Arbitrary<{ type: string; data: string }> {
  return fc.tuple(fc.integer({ min: 1, max: maxDepth }), fc.boolean()).map(([depth, arrays]) => ({
    type: 'application/json',
    data: `{${fields},"junk":${(arrays ? '[' : '{"a":').repeat(depth)}0${(arrays ? ']' : '}').repeat(depth)}}`,
  }));
}

/** Arbitrary path segments under a prefix, for a "no route of any shape is a 5xx" property. */
export const pathSegments = fc.tuple(fc.array(fc.string({ maxLength: 12 }), { minLength: 1, maxLength: 5 }), fc.constantFrom('get', 'post', 'delete', 'put', 'patch') as fc.Arbitrary<'get' | 'post' | 'delete' | 'put' | 'patch'>);
