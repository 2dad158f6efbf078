/**
 * Summarise a V8 .cpuprofile (BENCH_CPU_PROF): self time by function and by package/file, the heaviest first.
 *   npx tsx bench/lib/profile-summary.ts /tmp/prof/123.cpuprofile
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
const p = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const self = new Map<number, number>();
p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
const total = [...self.values()].reduce((a, b) => a + b, 0);
const byFn = new Map<string, number>();
const byFile = new Map<string, number>();
for (const n of p.nodes) {
  const t = self.get(n.id) ?? 0;
  const url = n.callFrame.url.replace(/^.*node_modules\//, 'nm/').replace(/^file:\/\/.*\/src\//, 'src/');
  const fn = `${n.callFrame.functionName || '(anon)'} ${url}:${n.callFrame.lineNumber}`;
  byFn.set(fn, (byFn.get(fn) ?? 0) + t);
  const file = url.startsWith('nm/') ? url.split('/').slice(0, url.startsWith('nm/@') ? 3 : 2).join('/') : url || n.callFrame.functionName;
  byFile.set(file, (byFile.get(file) ?? 0) + t);
}
const top = (m: Map<string, number>, n: number) =>
  [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`);
console.log(`total ${(total / 1000).toFixed(0)} ms\n-- by file/package --\n${top(byFile, 25).join('\n')}\n-- by function --\n${top(byFn, 40).join('\n')}`);

// Inclusive time of the functions named on the command line (e.g. parserOnIncoming, acceptPlain).
const names = process.argv.slice(3);
if (names.length) {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const incl = (id: number): number => (self.get(id) ?? 0) + (byId.get(id)!.children ?? []).reduce((a, c) => a + incl(c), 0);
  for (const name of names) {
    let t = 0;
    const visit = (id: number, inside: boolean) => {
      const n = byId.get(id)!;
      const hit = !inside && n.callFrame.functionName === name;
      if (hit) t += incl(id);
      for (const c of n.children ?? []) visit(c, inside || hit);
    };
    visit(p.nodes[0]!.id, false);
    console.log(`${((t / total) * 100).toFixed(1).padStart(5)}%  inclusive ${name}`);
  }
}
