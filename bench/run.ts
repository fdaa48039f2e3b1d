/**
 * `npm run bench`: every benchmark in turn, each printing its own table (see docs/benchmarks.md).
 * BENCH_QUICK=1 for a smoke run with small numbers. BENCH_ONLY=rate,ingress,shared,throttle,fairness to pick
 * some.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { main as rateAccuracy } from './rate-accuracy';
import { main as ingress } from './ingress';
import { main as throttleReaction } from './throttle-reaction';
import { main as tenantFairness } from './tenant-fairness';
import { quickMode } from './lib/report';

interface Bench {
  key: string;
  run: () => Promise<void>;
}

async function sharedRate(): Promise<void> {
  // Written separately (issue: Redis-shared limit); run it when present.
  const file = path.join(__dirname, 'shared-rate.ts');
  if (!fs.existsSync(file)) {
    console.log('\n## Shared rate: bench/shared-rate.ts not present, skipped');
    return;
  }
  type Module = { main?: () => Promise<void> };
  const mod = (await import(pathToFileURL(file).href)) as Module & { default?: Module };
  const run = mod.main ?? mod.default?.main;
  if (typeof run !== 'function') throw new Error('bench/shared-rate.ts does not export main()');
  await run();
}

export async function main(): Promise<void> {
  const benches: Bench[] = [
    { key: 'rate', run: rateAccuracy },
    { key: 'ingress', run: ingress },
    { key: 'shared', run: sharedRate },
    { key: 'throttle', run: throttleReaction },
    { key: 'fairness', run: tenantFairness },
  ];
  const only = (process.env.BENCH_ONLY ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  console.log(
    `# ses-email-service benchmarks${quickMode() ? ' (quick mode)' : ''}\n` +
      `node ${process.version}, ${new Date().toISOString()}`,
  );
  const failed: string[] = [];
  for (const b of benches) {
    if (only.length && !only.includes(b.key)) continue;
    try {
      await b.run();
    } catch (err) {
      failed.push(b.key);
      console.error(`\nbenchmark ${b.key} failed:`, err);
    }
  }
  if (failed.length) {
    console.error(`\nfailed: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  void main();
}
