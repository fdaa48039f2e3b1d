/**
 * Combined rate accuracy of admission shared through Redis: 1 and 3 replicas (separate node processes,
 * each an admission with the Redis back end on one real redis-server) draining a backlog at 14 and 200
 * recipients/s.
 *
 *   node --import tsx bench/shared-rate.ts                 # the table (README figures)
 *   node --import tsx bench/shared-rate.ts --sweep         # LIMITER_HEARTBEAT sweep (docs/scale-out.md)
 *
 * Each replica runs CONCURRENCY admit loops with recipient counts 1..3 (mostly 1), settles each
 * transaction at once and records the grant times; the parent merges them. The run starts once the
 * shared bucket has had time to fill, so achieved = (granted - burst) / (rate * seconds): a perfect
 * limiter scores 100 %. "max 1 s" is the most recipients granted in any 1-second window;
 * the limiter's bound for it is rate + burst.
 */
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import Redis from 'ioredis';
import { createAdmission } from '../src/egress/rate/admission-factory';
import { silentLogger } from '../src/observability/logger';
import { quickMode } from './lib/report';
import {
  startRedisServer,
  REDIS_SERVER,
  REDIS_MISSING,
  type RedisServer,
} from '../test/helpers/redis-server';
import { maxInWindow as windowMax } from '../test/helpers/windows';

const CONCURRENCY = 4;
const WEIGHTS = [1, 1, 1, 1, 2, 1, 1, 1, 3, 1];

interface ReplicaSpec {
  redisUrl: string;
  limiterId: string;
  rate: number;
  burst: number;
  heartbeatMs: number;
  durationMs: number;
}

interface ReplicaResult {
  grants: Array<[number, number]>;
  cpuMs: number;
  errors: number;
}

/** Child side: build the limiter, say ready, wait for "go <epoch ms>", run the loops, print the grants. */
async function runReplica(spec: ReplicaSpec): Promise<void> {
  const limiter = await createAdmission({
    redisUrl: spec.redisUrl,
    limiterId: spec.limiterId,
    rate: spec.rate,
    burst: spec.burst,
    throttleFactor: 0.8,
    throttleRecoveryMs: 60_000,
    throttlePauseMs: 1000,
    quotaProbeIntervalMs: 60_000,
    poolSize: CONCURRENCY,
    heartbeatMs: spec.heartbeatMs,
    logger: silentLogger,
  });
  process.stdout.write('ready\n');
  const rl = readline.createInterface({ input: process.stdin });
  const startAt = await new Promise<number>((resolve) =>
    rl.once('line', (line) => resolve(Number(line.split(' ')[1]))),
  );
  rl.close();
  await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
  const end = startAt + spec.durationMs;
  const grants: Array<[number, number]> = [];
  let errors = 0;
  const cpu0 = process.cpuUsage();
  let k = Math.floor(Math.random() * WEIGHTS.length);
  const loop = async () => {
    while (Date.now() < end) {
      const w = Math.min(spec.burst, WEIGHTS[k++ % WEIGHTS.length]);
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), Math.max(1, end - Date.now()));
      try {
        const ticket = await limiter.admit(w, ac.signal);
        const now = Date.now();
        if (now < end) grants.push([now, w]);
        await ticket.settle({ delivered: w });
      } catch {
        if (Date.now() < end) errors++;
      } finally {
        clearTimeout(t);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  const cpu = process.cpuUsage(cpu0);
  await limiter.stop();
  const result: ReplicaResult = { grants, cpuMs: (cpu.user + cpu.system) / 1000, errors };
  process.stdout.write(JSON.stringify(result) + '\n');
}

/** Most recipients granted within any window [t, t + ms). */
export const maxInWindow = (grants: Array<[number, number]>, ms: number) =>
  windowMax(
    grants.map(([at, n]) => ({ at, n })),
    ms,
  );

export interface ScenarioResult {
  replicas: number;
  rate: number;
  burst: number;
  heartbeatMs: number;
  seconds: number;
  granted: number;
  /** (granted - burst) / (rate * seconds). */
  achieved: number;
  max1s: number;
  /** Largest excess over burst + rate * W for W in 0.1, 0.5, 1, 2, 5 s (<= 0 means within the bound). */
  worstExcess: number;
  /** Replica CPU per second of run, summed over replicas (ms/s). */
  cpuMsPerSec: number;
  redisCommandsPerSec: number;
  errors: number;
}

async function redisCommands(redis: RedisServer): Promise<number> {
  const c = new Redis(redis.url);
  const info = await c.info('stats');
  c.disconnect();
  return Number(/total_commands_processed:(\d+)/.exec(info)?.[1] ?? 0);
}

export async function runScenario(
  redis: RedisServer,
  opts: {
    replicas: number;
    rate: number;
    burst?: number;
    heartbeatMs: number;
    seconds: number;
  },
): Promise<ScenarioResult> {
  const burst = opts.burst ?? Math.max(1, Math.ceil(opts.rate));
  const spec: ReplicaSpec = {
    redisUrl: redis.url,
    limiterId: `bench-${process.pid}-${Math.random().toString(36).slice(2)}`,
    rate: opts.rate,
    burst,
    heartbeatMs: opts.heartbeatMs,
    durationMs: opts.seconds * 1000,
  };
  const children = Array.from({ length: opts.replicas }, () =>
    spawn(process.execPath, ['--import', 'tsx', __filename, '--replica', JSON.stringify(spec)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  const outputs = children.map((child) => {
    const lines: string[] = [];
    const rl = readline.createInterface({ input: child.stdout! });
    const ready = new Promise<void>((resolve) =>
      rl.on('line', (l) => (l === 'ready' ? resolve() : lines.push(l))),
    );
    const done = new Promise<ReplicaResult>((resolve, reject) =>
      child.once('exit', (code) => {
        const last = lines.find((l) => l.startsWith('{'));
        if (code !== 0 || !last) reject(new Error(`replica exited ${code}`));
        else resolve(JSON.parse(last) as ReplicaResult);
      }),
    );
    return { ready, done };
  });
  await Promise.all(outputs.map((o) => o.ready));
  const commands0 = await redisCommands(redis);
  // The shared bucket starts empty: begin once it is full, so a perfect drain scores 100 %.
  const startAt = Date.now() + Math.max(300, (burst / opts.rate) * 1000 + 200);
  for (const c of children) c.stdin!.write(`go ${startAt}\n`);
  const results = await Promise.all(outputs.map((o) => o.done));
  const commands1 = await redisCommands(redis);
  const grants = results.flatMap((r) => r.grants);
  const granted = grants.reduce((n, g) => n + g[1], 0);
  let worstExcess = -Infinity;
  for (const w of [100, 500, 1000, 2000, 5000]) {
    worstExcess = Math.max(worstExcess, maxInWindow(grants, w) - (burst + (opts.rate * w) / 1000));
  }
  return {
    replicas: opts.replicas,
    rate: opts.rate,
    burst,
    heartbeatMs: opts.heartbeatMs,
    seconds: opts.seconds,
    granted,
    achieved: (granted - burst) / (opts.rate * opts.seconds),
    max1s: maxInWindow(grants, 1000),
    worstExcess,
    cpuMsPerSec: results.reduce((n, r) => n + r.cpuMs, 0) / opts.seconds,
    redisCommandsPerSec: (commands1 - commands0) / (opts.seconds + 0.3),
    errors: results.reduce((n, r) => n + r.errors, 0),
  };
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)} %`;
}

export function formatTable(results: ScenarioResult[]): string {
  const header = [
    'replicas',
    'limit/s',
    'burst',
    'heartbeat',
    'achieved/limit',
    'max in 1 s (bound)',
    'worst excess',
    'CPU ms/s',
    'redis cmd/s',
  ];
  const rows = results.map((r) => [
    String(r.replicas),
    String(r.rate),
    String(r.burst),
    `${r.heartbeatMs} ms`,
    pct(r.achieved),
    `${r.max1s} (${r.rate + r.burst})`,
    r.worstExcess <= 0 ? 'none' : r.worstExcess.toFixed(2),
    r.cpuMsPerSec.toFixed(0),
    r.redisCommandsPerSec.toFixed(0),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
  return [line(header), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line)].join(
    '\n',
  );
}

/** The README table: 1 and 3 replicas at 14 and 200 recipients/s. */
export async function main(
  options: { seconds?: number; heartbeatMs?: number; print?: boolean } = {},
): Promise<ScenarioResult[]> {
  if (!REDIS_SERVER) {
    console.log(`shared-rate: ${REDIS_MISSING}`);
    return [];
  }
  const redis = await startRedisServer();
  const results: ScenarioResult[] = [];
  try {
    for (const rate of [14, 200]) {
      for (const replicas of [1, 3]) {
        results.push(
          await runScenario(redis, {
            replicas,
            rate,
            heartbeatMs: options.heartbeatMs ?? 50,
            seconds: options.seconds ?? (quickMode() ? 3 : 10),
          }),
        );
      }
    }
  } finally {
    await redis.close();
  }
  if (options.print !== false) {
    console.log(
      '\n## Shared rate through Redis (bench/shared-rate.ts): recipients per second, all replicas\n',
    );
    console.log(formatTable(results));
  }
  return results;
}

/**
 * LIMITER_HEARTBEAT sweep (docs/scale-out.md): 3 replicas, each case `repeat` times (shared machines are
 * noisy; compare medians).
 */
async function sweep(seconds: number, repeat: number): Promise<void> {
  if (!REDIS_SERVER) throw new Error(REDIS_MISSING);
  const redis = await startRedisServer();
  const results: ScenarioResult[] = [];
  const cases: Array<{ rate: number; burst?: number; heartbeats: number[] }> = [
    { rate: 14, heartbeats: [10, 50, 250, 1000] },
    { rate: 200, heartbeats: [10, 50, 250, 1000] },
    { rate: 14, burst: 2, heartbeats: [10, 50, 250] },
  ];
  try {
    for (const c of cases) {
      for (const heartbeatMs of c.heartbeats) {
        for (let i = 0; i < repeat; i++) {
          results.push(
            await runScenario(redis, { replicas: 3, rate: c.rate, burst: c.burst, heartbeatMs, seconds }),
          );
        }
      }
    }
  } finally {
    await redis.close();
  }
  console.log(formatTable(results));
}

if (require.main === module) {
  const i = process.argv.indexOf('--replica');
  if (i >= 0) {
    runReplica(JSON.parse(process.argv[i + 1]) as ReplicaSpec).catch((err) => {
      console.error(err);
      process.exit(1);
    });
  } else if (process.argv.includes('--sweep')) {
    sweep(Number(process.env.BENCH_SECONDS ?? 8), Number(process.env.BENCH_REPEAT ?? 2)).catch((err) => {
      console.error(err);
      process.exit(1);
    });
  } else {
    main({ seconds: process.env.BENCH_SECONDS ? Number(process.env.BENCH_SECONDS) : undefined }).catch(
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  }
}
