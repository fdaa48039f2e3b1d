/**
 * The Redis-shared recipient limiter against a real redis-server: several RedisLimiter instances with one
 * limiter id (each with its own connections, as replicas have) share one rate; another id is independent;
 * a 454 reported to one slows all; Redis stopped means nothing is granted and everything resumes after
 * a restart.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LimiterUnavailableError } from '../src/egress/rate/limiter';
import { RedisLimiter, type RedisLimiterOptions } from '../src/egress/rate/redis-limiter';
import { silentLogger } from '../src/observability/logger';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';
import { maxInWindow as windowMax } from './helpers/windows';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
type Grant = [at: number, recipients: number];

const maxInWindow = (grants: Grant[], ms: number) =>
  windowMax(
    grants.map(([at, n]) => ({ at, n })),
    ms,
  );

const total = (grants: Grant[]) => grants.reduce((n, g) => n + g[1], 0);

/**
 * Keep `concurrency` acquire loops per limiter busy until `until()` says stop; records grants.
 * Rejections (Redis down) are counted and retried after 20 ms, as the dispatcher would.
 */
function load(limiters: RedisLimiter[], weights: number[], concurrency = 3) {
  const grants: Grant[] = [];
  let rejections = 0;
  let running = true;
  const ac = new AbortController();
  const loops = limiters.flatMap((limiter) =>
    Array.from({ length: concurrency }, async (_, j) => {
      let k = j;
      for (let i = 0; running && i < 100_000; i++) {
        const w = weights[k++ % weights.length];
        try {
          await limiter.acquire(w, ac.signal);
          if (running) grants.push([Date.now(), w]);
        } catch (err) {
          if (!(err instanceof LimiterUnavailableError)) throw err;
          if (running) rejections++;
          if (running) await sleep(20);
        }
      }
    }),
  );
  return {
    grants,
    rejections: () => rejections,
    async stop() {
      running = false;
      ac.abort();
      await Promise.all(loops);
    },
  };
}

describe('RedisLimiter (real redis-server)', { skip: REDIS_SERVER ? false : REDIS_MISSING }, () => {
  let redis: RedisServer;
  const made: RedisLimiter[] = [];
  let seq = 0;

  async function limiters(
    count: number,
    overrides: Partial<RedisLimiterOptions> = {},
  ): Promise<RedisLimiter[]> {
    const limiterId = overrides.limiterId ?? `test-${process.pid}-${++seq}`;
    const list = await Promise.all(
      Array.from({ length: count }, () =>
        RedisLimiter.create({
          redisUrl: redis.url,
          limiterId,
          rate: 40,
          burst: 20,
          throttleFactor: 0.5,
          throttleRecoveryMs: 60_000,
          heartbeatMs: 50,
          logger: silentLogger,
          ...overrides,
        }),
      ),
    );
    made.push(...list);
    return list;
  }

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    await Promise.all(made.map((l) => l.stop()));
    await redis?.close();
  });

  test('three replicas share one rate: every window within rate*W + burst, >= 95 % of the rate', async () => {
    const rate = 40;
    const burst = 20;
    const seconds = 10;
    const group = await limiters(3, { rate, burst });
    assert.ok(group.every((l) => l.status().available));
    const run = load(group, [1, 1, 2, 1, 3, 1, 1, 5]);
    const started = Date.now();
    await sleep(seconds * 1000);
    await run.stop();
    const elapsed = (Date.now() - started) / 1000;
    for (const w of [250, 500, 1000, 2000, 5000]) {
      const max = maxInWindow(run.grants, w);
      // +1: one reservoir increment of slack, +2 % of the rate for timestamps taken after the grant.
      const bound = burst + (rate * w) / 1000 + 1 + rate * 0.02;
      assert.ok(max <= bound, `window ${w} ms: ${max} recipients > bound ${bound.toFixed(1)}`);
    }
    const achieved = (total(run.grants) - burst) / (rate * elapsed);
    assert.ok(achieved >= 0.95, `achieved ${(achieved * 100).toFixed(1)} % of the rate`);
    assert.ok(achieved <= 1.02, `achieved ${(achieved * 100).toFixed(1)} % of the rate`);
    assert.equal(run.rejections(), 0);
  });

  test('a different limiter id has its own rate', async () => {
    const rate = 30;
    const [a] = await limiters(1, { rate, burst: 10 });
    const [b] = await limiters(1, { rate, burst: 10 });
    const ra = load([a], [1]);
    const rb = load([b], [1]);
    await sleep(3000);
    await Promise.all([ra.stop(), rb.stop()]);
    for (const r of [ra, rb]) {
      const got = total(r.grants);
      assert.ok(got >= 10 + rate * 3 * 0.9, `independent id got only ${got}`);
      assert.ok(got <= 10 + rate * 3 + 2, `independent id got ${got}`);
    }
  });

  test('a 454 reported to one replica slows every replica, and the reservoir is emptied', async () => {
    const rate = 40;
    const burst = 20;
    const group = await limiters(3, { rate, burst, throttleFactor: 0.5, throttleRecoveryMs: 60_000 });
    const run = load(group, [1]);
    await sleep(1000);
    group[0].throttled();
    const throttledAt = Date.now();
    // Another replica's in-flight send gets its 454 a moment later: debounced, it does not compound.
    await sleep(50);
    group[1].throttled();
    // The others learn the shared fraction on their next probe (250 ms).
    await sleep(600);
    for (const l of group) {
      const eff = l.status().effectiveRate;
      assert.ok(eff > rate * 0.45 && eff < rate * 0.55, `effectiveRate ${eff}`);
    }
    await sleep(3000);
    await run.stop();
    const after454 = run.grants.filter((g) => g[0] >= throttledAt + 100);
    // Half the rate (recovering by at most 3.5/60 of the rest), nothing left in the bucket.
    const seconds = (Date.now() - throttledAt - 100) / 1000;
    const got = total(after454);
    assert.ok(got <= rate * 0.53 * seconds + 2, `after 454: ${got} recipients in ${seconds.toFixed(1)} s`);
    assert.ok(got >= rate * 0.45 * seconds - 2, `after 454: ${got} recipients in ${seconds.toFixed(1)} s`);
  });

  test('Redis stopped: nothing granted, acquire rejects fast, available false; resumes after restart', async () => {
    const rate = 40;
    const group = await limiters(3, { rate, burst: 10 });
    const run = load(group, [1, 2]);
    await sleep(1000);
    await redis.stop();
    const stoppedAt = Date.now();
    await sleep(1500);
    for (const l of group) assert.equal(l.status().available, false);
    const t0 = Date.now();
    await assert.rejects(group[0].acquire(1), LimiterUnavailableError);
    assert.ok(Date.now() - t0 < 100, 'acquire must reject at once while Redis is down');
    const restartAt = Date.now();
    await redis.restart();
    const deadline = Date.now() + 5000;
    while (!group.every((l) => l.status().available) && Date.now() < deadline) await sleep(50);
    assert.ok(
      group.every((l) => l.status().available),
      'every replica is available again after the restart',
    );
    await sleep(1500);
    await run.stop();
    const during = run.grants.filter((g) => g[0] > stoppedAt + 20 && g[0] < restartAt);
    assert.deepEqual(during, [], 'no grant while Redis was down');
    assert.ok(run.rejections() > 0, 'acquires were rejected while Redis was down');
    const afterRestart = total(run.grants.filter((g) => g[0] >= restartAt));
    assert.ok(afterRestart >= rate, `delivery resumed after the restart (${afterRestart} recipients)`);
  });

  test('Redis frozen (answers nothing, connections open): paused within the command timeout, then resumes', async () => {
    const group = await limiters(2, { rate: 40, burst: 10 });
    const run = load(group, [1]);
    await sleep(500);
    redis.pause();
    const pausedAt = Date.now();
    try {
      const deadline = Date.now() + 3000;
      while (group.some((l) => l.status().available) && Date.now() < deadline) await sleep(20);
      const detectedMs = Date.now() - pausedAt;
      assert.ok(
        group.every((l) => !l.status().available),
        'unavailable while Redis does not answer',
      );
      assert.ok(detectedMs < 2000, `detected after ${detectedMs} ms`);
      const t0 = Date.now();
      await assert.rejects(group[1].acquire(1), LimiterUnavailableError);
      assert.ok(Date.now() - t0 < 100);
    } finally {
      redis.resume();
    }
    const resumedAt = Date.now();
    const deadline = Date.now() + 6000;
    while (!group.every((l) => l.status().available) && Date.now() < deadline) await sleep(50);
    assert.ok(
      group.every((l) => l.status().available),
      'available again once Redis answers',
    );
    await sleep(1000);
    await run.stop();
    const during = run.grants.filter((g) => g[0] > pausedAt + 20 && g[0] < resumedAt);
    assert.deepEqual(during, [], 'no grant while Redis was frozen');
    assert.ok(total(run.grants.filter((g) => g[0] >= resumedAt)) > 0, 'grants resumed');
  });

  test('the shared slow-down recovers on every replica', async () => {
    const rate = 40;
    const group = await limiters(2, { rate, burst: 10, throttleRecoveryMs: 1000 });
    group[0].throttled();
    await sleep(400);
    assert.ok(group[1].status().effectiveRate < rate, 'the other replica slowed down');
    const deadline = Date.now() + 3000;
    while (group.some((l) => l.status().effectiveRate < rate) && Date.now() < deadline) await sleep(50);
    for (const l of group) assert.equal(l.status().effectiveRate, rate);
  });

  test('created while Redis is down: unavailable, then available when it comes up', async () => {
    await redis.stop();
    try {
      const started = Date.now();
      const [l] = await limiters(1, { connectTimeoutMs: 500 });
      assert.ok(Date.now() - started < 3000);
      assert.equal(l.status().available, false);
      await assert.rejects(l.acquire(1), LimiterUnavailableError);
      await redis.restart();
      const deadline = Date.now() + 5000;
      while (!l.status().available && Date.now() < deadline) await sleep(50);
      assert.equal(l.status().available, true);
      await l.acquire(1);
    } finally {
      if (!redis.running) await redis.restart();
    }
  });

  test('acquire contract: too many recipients, abort, stop', async () => {
    const [l] = await limiters(1, { rate: 1, burst: 2 });
    await assert.rejects(l.acquire(3), RangeError);
    await assert.rejects(l.acquire(1.5), RangeError);
    await l.acquire(0);
    await l.acquire(2); // the full bucket
    const ac = new AbortController();
    const pending = l.acquire(2, ac.signal);
    ac.abort();
    await assert.rejects(pending, LimiterUnavailableError);
    const waiting = l.acquire(1);
    await l.stop();
    await assert.rejects(waiting, LimiterUnavailableError);
    await assert.rejects(l.acquire(1), LimiterUnavailableError);
    assert.equal(l.status().available, false);
  });
});
