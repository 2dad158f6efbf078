/**
 * Merge result files of separate `npm run bench -- <name>` runs into one (their figures, their load notes), and
 * with `--compare before.json`, print a markdown table of before and after:
 *   node .bench-build/bench/lib/merge.js bench/results.json a.json b.json …
 *   node .bench-build/bench/lib/merge.js --compare bench/results-before.json bench/results.json
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { Figure } from './env.js';

interface Results {
  date: string;
  commit: string;
  machine: unknown;
  command: string;
  repeats: number;
  load: Record<string, unknown>;
  figures: Figure[];
}
const read = (f: string) => JSON.parse(readFileSync(f, 'utf8')) as Results;
const args = process.argv.slice(2);

if (args[0] === '--compare') {
  const before = read(args[1]!);
  const after = read(args[2]!);
  const key = (f: Figure) => `${f.bench}|${f.metric}`;
  const old = new Map(before.figures.map((f) => [key(f), f]));
  console.log('| benchmark | figure | before | after | baseline (same run) | ratio | goal | noise |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const f of after.figures) {
    const b = old.get(key(f));
    const base = f.baseline ? `${f.baseline.what}: ${f.baseline.value}` : '';
    const ratio = f.ratio !== undefined ? `${f.ratio}×${b?.ratio !== undefined ? ` (was ${b.ratio}×)` : ''}` : '';
    console.log(`| ${f.bench} | ${f.metric} | ${b ? `${b.value} ${b.unit}` : '—'} | ${f.value} ${f.unit} | ${base} | ${ratio} | ${f.goal ?? ''} | ${f.noisePct !== undefined ? `±${f.noisePct}%` : ''} |`);
  }
} else {
  const [out, ...inputs] = args;
  const all = inputs.map(read);
  const merged: Results = { ...all[0]!, date: all.at(-1)!.date, command: 'npm run bench (one benchmark per invocation, merged)', load: {}, figures: [] };
  for (const r of all) {
    Object.assign(merged.load, r.load);
    merged.figures.push(...r.figures);
  }
  writeFileSync(out!, `${JSON.stringify(merged, null, 2)}\n`);
}
