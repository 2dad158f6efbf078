/**
 * The benchmark suite (issue #10): each figure beside a baseline measured in the same run where one exists, with
 * CPU time next to wall time (these machines are shared: CPU per unit of work is the steadier figure), repeated,
 * with the spread of the repeats as its noise. Writes bench/results.json and prints a table.
 *
 *   npm run bench                      # everything, compiled by tsc as `npm start` runs (about 15 minutes on 2 cores)
 *   npm run bench -- fanout resume     # some of it
 *   npm run bench -- --quick           # shorter windows, fewer samples
 *   BENCH_REPEATS=5 npm run bench      # more repeats (default 3)
 *   npx tsx bench/run-all.ts …         # from the sources through tsx (slower: esbuild's keepNames)
 *
 * Each benchmark starts Sluice in a process of its own (bench/lib/server-child.ts) on a fresh database of one
 * embedded Postgres started with pg_stat_statements. See README "Benchmarks" for what each figure means.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { benchAccept } from './accept.js';
import { load, type BenchEnv, type Figure } from './lib/env.js';
import { projectRoot, startBenchPostgres } from './lib/pg.js';
import { benchEndToEnd, benchStatements, benchTtft } from './runs.js';
import { benchCrossProcess, benchFanout, benchMemory, benchResume } from './streams.js';
import { benchQueue, benchQueueScaling } from './queue.js';
import { benchStop } from './stop.js';

const BENCHES: Record<string, (env: BenchEnv) => Promise<void>> = {
  statements: benchStatements,
  accept: benchAccept,
  e2e: benchEndToEnd,
  ttft: benchTtft,
  fanout: benchFanout,
  memory: benchMemory,
  cross: benchCrossProcess,
  resume: benchResume,
  queue: benchQueue,
  'queue-scaling': benchQueueScaling,
  stop: benchStop,
};

async function main() {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const chosen = args.filter((a) => !a.startsWith('--'));
  const names = chosen.length ? chosen : Object.keys(BENCHES);
  for (const n of names) if (!BENCHES[n]) throw new Error(`no benchmark ${n}; there are ${Object.keys(BENCHES).join(', ')}`);
  const pg = await startBenchPostgres();
  const figures: Figure[] = [];
  const env: BenchEnv = { pg, repeats: Number(process.env.BENCH_REPEATS ?? (quick ? 2 : 3)), quick, figures, log: (l) => console.error(l) };
  const loads: Record<string, { before: number; after: number; seconds: number }> = {};
  try {
    for (const name of names) {
      const before = load();
      const t0 = Date.now();
      console.error(`— ${name} (load ${before.toFixed(2)})`);
      await BENCHES[name]!(env);
      loads[name] = { before, after: load(), seconds: Math.round((Date.now() - t0) / 1000) };
    }
  } finally {
    await pg.stop();
  }
  const root = projectRoot();
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
  } catch {}
  const out = {
    date: new Date().toISOString(),
    commit,
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memGb: Math.round(os.totalmem() / 2 ** 30), node: process.version },
    command: `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`,
    repeats: env.repeats,
    /** One-minute load average before and after each benchmark: the machine is shared. */
    load: loads,
    figures,
  };
  writeFileSync(path.join(root, 'bench', process.env.BENCH_OUT ?? 'results.json'), `${JSON.stringify(out, null, 2)}\n`);
  console.log(`\nSluice benchmarks ${out.date} ${commit} (${out.machine.cpus} × ${out.machine.model}, ${out.machine.node}), ${env.repeats} repeats\n`);
  for (const f of figures) {
    const base = f.baseline ? `  vs ${f.baseline.what}: ${f.baseline.value}${f.ratio !== undefined ? ` → ${f.ratio}×` : ''}` : '';
    const noise = f.noisePct !== undefined ? ` ±${f.noisePct}%` : '';
    console.log(`${f.bench.padEnd(14)} ${f.metric.padEnd(78)} ${String(f.value).padStart(9)} ${f.unit}${noise}${base}${f.goal ? `  (goal ${f.goal})` : ''}`);
  }
  for (const f of figures.filter((x) => x.note && x.bench === 'statements')) console.log(`\n${f.metric}:\n${f.note}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
