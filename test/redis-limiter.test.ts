/**
 * Admission shared through a real redis-server: several admissions with one limiter id (each with its own
 * connection, as replicas have) share one rate; another id is independent; a 454 reported at one holds
 * all, a repeated one lowers the rate of all and it recovers on all; Redis stopped or frozen means nothing
 * is admitted, and everything resumes after a restart.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { LimiterUnavailableError } from '../src/egress/rate/admission-errors';
import type { RateAdmission } from '../src/egress/rate/admission';
import { createAdmission, type AdmissionSettings } from '../src/egress/rate/admission-factory';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';
import { saturate, settings, sleep, total, type Grant } from './helpers/admission';
import { maxInWindow } from './helpers/windows';

const load = (replicas: RateAdmission[], weights: number[], concurrency = 3) =>
  saturate(replicas, weights, { concurrency });

/** Grants in [from, to) (performance.now() times). */
const between = (grants: Grant[], from: number, to = Infinity) =>
  grants.filter((g) => g.at >= from && g.at < to);

describe(
  'Admission shared through Redis (real redis-server)',
  { skip: REDIS_SERVER ? false : REDIS_MISSING },
  () => {
    let redis: RedisServer;
    const made: RateAdmission[] = [];
    let seq = 0;

    /** `count` replicas of one limiter id (each with its own connection, as replicas have). */
    async function replicas(
      count: number,
      overrides: Partial<AdmissionSettings> = {},
    ): Promise<RateAdmission[]> {
      const limiterId = overrides.limiterId ?? `test-${process.pid}-${++seq}`;
      const list = await Promise.all(
        Array.from({ length: count }, () =>
          createAdmission(
            settings({
              redisUrl: redis.url,
              limiterId,
              rate: 40,
              burst: 20,
              ...overrides,
            }),
          ),
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
      const group = await replicas(3, { rate, burst });
      assert.ok(group.every((l) => l.status().available));
      const started = performance.now();
      const run = load(group, [1, 1, 2, 1, 3, 1, 1, 5]);
      await sleep(seconds * 1000);
      await run.stop();
      const elapsed = (performance.now() - started) / 1000;
      for (const w of [250, 500, 1000, 2000, 5000]) {
        const max = maxInWindow(run.grants, w);
        // +2 % of the rate for timestamps taken after the grant.
        const bound = burst + (rate * w) / 1000 + rate * 0.02;
        assert.ok(max <= bound, `window ${w} ms: ${max} recipients > bound ${bound.toFixed(1)}`);
      }
      // The shared bucket starts empty (nothing is known about the last second): a perfect drain is rate × t.
      const achieved = total(run.grants) / (rate * elapsed);
      assert.ok(achieved >= 0.95, `achieved ${(achieved * 100).toFixed(1)} % of the rate`);
      assert.ok(achieved <= 1.02, `achieved ${(achieved * 100).toFixed(1)} % of the rate`);
      assert.equal(run.refusals(), 0);
    });

    test('a different limiter id has its own rate', async () => {
      const rate = 30;
      const [a] = await replicas(1, { rate, burst: 10 });
      const [b] = await replicas(1, { rate, burst: 10 });
      const ra = load([a], [1]);
      const rb = load([b], [1]);
      await sleep(3000);
      await Promise.all([ra.stop(), rb.stop()]);
      for (const r of [ra, rb]) {
        const got = total(r.grants);
        assert.ok(got >= rate * 3 * 0.9, `independent id got only ${got}`);
        assert.ok(got <= 10 + rate * 3 + 2, `independent id got ${got}`);
      }
    });

    test('a 454 at one replica holds every replica; a repeated one lowers the rate of every replica', async () => {
      const rate = 40;
      const group = await replicas(3, { rate, burst: 20, throttlePauseMs: 800 });
      const signal = new AbortController().signal;
      const run = load(group, [1]);
      await sleep(1000);
      // Two transactions on the wire at two replicas when SES's bucket ran dry.
      const [t1, t2] = await Promise.all([group[0].admit(1, signal), group[1].admit(1, signal)]);
      // An isolated 454: the shared bucket is drained and held for 800 ms, then the full rate.
      await t1.settle({ throttled: 1 });
      const isolatedAt = performance.now();
      // The other replica's send gets its 454 a moment later: the same event.
      await t2.settle({ throttled: 1 });
      await sleep(1500);
      const held = between(run.grants, isolatedAt + 30, isolatedAt + 750);
      assert.deepEqual(held, [], 'nothing admitted on any replica during the hold');
      const afterHold = total(between(run.grants, isolatedAt + 900, isolatedAt + 1500));
      assert.ok(afterHold >= rate * 0.6 * 0.8, `full rate after the hold: ${afterHold} in 600 ms`);
      for (const l of group) assert.equal(l.status().effectiveRate, rate, 'isolated: the rate stays');
      // A second 454 within 10 s: the configured rate is above SES's. Every replica learns the new rate.
      const t3 = await group[2].admit(1, signal);
      await t3.settle({ throttled: 1 });
      const decreasedAt = performance.now();
      await sleep(600);
      for (const l of group) {
        const eff = l.status().effectiveRate;
        assert.ok(eff > rate * 0.79 && eff < rate * 0.81, `effectiveRate ${eff}`);
      }
      await sleep(3000);
      await run.stop();
      const seconds = (performance.now() - decreasedAt - 800) / 1000;
      const got = total(between(run.grants, decreasedAt + 800));
      // 80 % of the rate, climbing by at most 20 % × 4/60 s.
      assert.ok(got <= rate * 0.82 * seconds + 3, `after the decrease: ${got} in ${seconds.toFixed(1)} s`);
      assert.ok(got >= rate * 0.75 * seconds - 3, `after the decrease: ${got} in ${seconds.toFixed(1)} s`);
    });

    test('Redis stopped: nothing granted, admit rejects fast, available false; resumes after restart', async () => {
      const rate = 40;
      const group = await replicas(3, { rate, burst: 10 });
      const run = load(group, [1, 2]);
      await sleep(1000);
      await redis.stop();
      const stoppedAt = performance.now();
      await sleep(1500);
      for (const l of group) assert.equal(l.status().available, false);
      const t0 = performance.now();
      await assert.rejects(group[0].admit(1, new AbortController().signal), LimiterUnavailableError);
      assert.ok(performance.now() - t0 < 100, 'admit must reject at once while Redis is down');
      const restartAt = performance.now();
      await redis.restart();
      const deadline = Date.now() + 5000;
      while (!group.every((l) => l.status().available) && Date.now() < deadline) await sleep(50);
      assert.ok(
        group.every((l) => l.status().available),
        'every replica is available again after the restart',
      );
      await sleep(1500);
      await run.stop();
      const during = between(run.grants, stoppedAt + 20, restartAt);
      assert.deepEqual(during, [], 'no grant while Redis was down');
      assert.ok(run.refusals() > 0, 'admissions were refused while Redis was down');
      const afterRestart = total(between(run.grants, restartAt));
      assert.ok(
        afterRestart >= rate * 0.5,
        `delivery resumed after the restart (${afterRestart} recipients)`,
      );
    });

    test('Redis frozen (answers nothing, connections open): paused within the command timeout, then resumes', async () => {
      const group = await replicas(2, { rate: 40, burst: 10 });
      const run = load(group, [1]);
      await sleep(500);
      redis.pause();
      const pausedAt = performance.now();
      try {
        const deadline = performance.now() + 3000;
        while (group.some((l) => l.status().available) && performance.now() < deadline) await sleep(20);
        const detectedMs = performance.now() - pausedAt;
        assert.ok(
          group.every((l) => !l.status().available),
          'unavailable while Redis does not answer',
        );
        assert.ok(detectedMs < 2000, `detected after ${detectedMs} ms`);
        const t0 = performance.now();
        await assert.rejects(group[1].admit(1, new AbortController().signal), LimiterUnavailableError);
        assert.ok(performance.now() - t0 < 100);
      } finally {
        redis.resume();
      }
      const resumedAt = performance.now();
      const deadline = Date.now() + 6000;
      while (!group.every((l) => l.status().available) && Date.now() < deadline) await sleep(50);
      assert.ok(
        group.every((l) => l.status().available),
        'available again once Redis answers',
      );
      await sleep(1000);
      await run.stop();
      // A command sent just before the freeze may be answered after it: 1 s of command timeout.
      const during = between(run.grants, pausedAt + 1100, resumedAt);
      assert.deepEqual(during, [], 'no grant while Redis was frozen');
      assert.ok(total(between(run.grants, resumedAt)) > 0, 'grants resumed');
    });

    test('the shared slow-down recovers on every replica', async () => {
      const rate = 40;
      const group = await replicas(2, { rate, burst: 10, throttleRecoveryMs: 1000, throttlePauseMs: 100 });
      const signal = new AbortController().signal;
      await sleep(300);
      for (const k of [0, 1]) {
        const t = await group[k].admit(1, signal);
        await t.settle({ throttled: 1 });
        await sleep(1100); // past the debounce: the second one is a repeated 454
      }
      await sleep(100);
      assert.ok(group[0].status().effectiveRate < rate, 'the other replica slowed down');
      const deadline = Date.now() + 3000;
      while (group.some((l) => l.status().effectiveRate < rate) && Date.now() < deadline) await sleep(50);
      for (const l of group) assert.equal(l.status().effectiveRate, rate);
    });

    test('created while Redis is down: unavailable, then available when it comes up', async () => {
      await redis.stop();
      try {
        const started = Date.now();
        const [l] = await replicas(1, { redis: { connectTimeoutMs: 500 } });
        assert.ok(Date.now() - started < 3000);
        assert.equal(l.status().available, false);
        await assert.rejects(l.admit(1, new AbortController().signal), LimiterUnavailableError);
        await redis.restart();
        const deadline = Date.now() + 5000;
        while (!l.status().available && Date.now() < deadline) await sleep(50);
        assert.equal(l.status().available, true);
        const t = await l.admit(1, new AbortController().signal);
        await t.settle({ delivered: 1 });
      } finally {
        if (!redis.running) await redis.restart();
      }
    });

    test('admit contract: too many recipients, abort, stop', async () => {
      const [l] = await replicas(1, { rate: 1, burst: 2 });
      const signal = new AbortController().signal;
      await assert.rejects(l.admit(3, signal), RangeError);
      await assert.rejects(l.admit(1.5, signal), RangeError);
      const ac = new AbortController();
      const pending = l.admit(2, ac.signal);
      await sleep(50);
      ac.abort();
      await assert.rejects(pending, LimiterUnavailableError);
      const waiting = l.admit(1, signal);
      await sleep(50);
      await l.stop();
      await assert.rejects(waiting, LimiterUnavailableError);
      await assert.rejects(l.admit(1, signal), LimiterUnavailableError);
      assert.equal(l.status().available, false);
    });
  },
);
