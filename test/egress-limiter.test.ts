/**
 * In-process admission (no REDIS_URL): a saturated backlog drains at >= 95 % of the rate within
 * rate × W + burst in every window, fractional rates, a restart loop (the bucket starts empty), the
 * argument contract, the throttle reaction in real time, and stop.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { LimiterUnavailableError } from '../src/egress/rate/admission-errors';
import { localAdmission, saturate, sleep, type Grant } from './helpers/admission';
import { maxInWindow } from './helpers/windows';

/** Checks the bound (total and every window) and returns the steady drain rate of the backlog. */
function checkRate(rate: number, burst: number, start: number, grants: Grant[], ms: number) {
  const total = grants.reduce((s, g) => s + g.n, 0);
  assert.ok(total <= burst + (rate * ms) / 1000 + 1, `total ${total} > bound ${burst + (rate * ms) / 1000}`);
  for (const w of [50, 100, 250, 500, 1000, 2000]) {
    if (w > ms) continue;
    const max = maxInWindow(grants, w);
    // Tolerance: timestamps are taken when the promise resolves, a few ms after the grant.
    const bound = burst + (rate * w) / 1000 + Math.max(1, rate * 0.01);
    assert.ok(max <= bound, `window ${w} ms: ${max} recipients > ${bound.toFixed(1)}`);
  }
  // Steady rate between two grant instants after the first second: right after each grant the bucket
  // is (nearly) empty, so the tokens granted in between are the tokens earned in between.
  const steady = [...grants].filter((g) => g.at >= start + 1000).sort((a, b) => a.at - b.at);
  const sum = steady.slice(1).reduce((s, g) => s + g.n, 0);
  const span = (steady[steady.length - 1].at - steady[0].at) / 1000;
  return { achieved: sum / span };
}

async function run(rate: number, burst: number, weights: number[], ms: number) {
  const admission = await localAdmission({ rate, burst });
  const start = performance.now();
  const load = saturate([admission], weights, { concurrency: 8 });
  await sleep(ms);
  await load.stop();
  await admission.stop();
  return { grants: load.grants.filter((g) => g.at < start + ms), start };
}

describe('Admission, in-process back end', () => {
  // Nothing else keeps the event loop running while a test waits for its first tokens.
  const keepAlive = setInterval(() => {}, 1000);
  after(() => clearInterval(keepAlive));

  it('drains a backlog at 14/s within the bound and >= 95 % of the rate', async (t) => {
    const ms = 4000;
    const { grants, start } = await run(14, 14, [1], ms);
    const { achieved } = checkRate(14, 14, start, grants, ms);
    t.diagnostic(`14/s: achieved ${achieved.toFixed(2)}/s (${((achieved / 14) * 100).toFixed(1)} %)`);
    assert.ok(achieved >= 14 * 0.95, `achieved ${achieved}`);
  });

  it('drains a backlog at 200/s with mixed weights within the bound and >= 95 %', async (t) => {
    const ms = 3000;
    const { grants, start } = await run(200, 50, [1, 7, 50, 3, 20, 13], ms);
    const { achieved } = checkRate(200, 50, start, grants, ms);
    t.diagnostic(`200/s: achieved ${achieved.toFixed(1)}/s (${((achieved / 200) * 100).toFixed(1)} %)`);
    assert.ok(achieved >= 200 * 0.95, `achieved ${achieved}`);
    assert.ok(
      grants.some((g) => g.n === 50),
      'a full-burst transaction was granted (no starvation)',
    );
  });

  it('handles fractional rates (0.5/s)', async () => {
    const { grants, start } = await run(0.5, 1, [1], 4300);
    // Empty at start, then one every 2 s: exactly 2 grants in 4.3 s, the first after 2 s.
    assert.equal(grants.length, 2);
    assert.ok(grants[0].at - start >= 1900, `first after ${grants[0].at - start} ms`);
    assert.ok(grants[1].at - grants[0].at >= 1900, `gap ${grants[1].at - grants[0].at}`);
  });

  it('starts empty: restarted again and again within a second, no 1 s window gets more than rate + burst', async (t) => {
    // A crash loop: each "process" saturates a fresh admission for a moment, then dies and the next starts.
    // With a bucket that started full, every start granted `burst` at once: measured before the fix,
    // 138 recipients in the busiest second against a bound of 40.
    const rate = 20;
    const burst = 20;
    const grants: Grant[] = [];
    const started = performance.now();
    for (let i = 0; i < 12; i++) {
      const life = [150, 200, 90, 250][i % 4];
      grants.push(...(await run(rate, burst, [1], life)).grants);
    }
    const elapsed = performance.now() - started;
    const busiest = maxInWindow(grants, 1000);
    t.diagnostic(
      `12 restarts in ${elapsed.toFixed(0)} ms: ${grants.length} granted, busiest 1 s: ${busiest}`,
    );
    assert.ok(busiest <= rate + burst, `busiest 1 s window: ${busiest} > ${rate + burst}`);
    // Each life starts from nothing: never more than the rate earns in it (+1 for timer rounding).
    assert.ok(grants.length <= (rate * elapsed) / 1000 + 12, `total ${grants.length}`);
  });

  it('refuses more than the burst at once with a RangeError (no deadlock)', async (t) => {
    const admission = await localAdmission({ rate: 10, burst: 5 });
    t.after(() => admission.stop());
    const signal = new AbortController().signal;
    await assert.rejects(admission.admit(6, signal), RangeError);
    await assert.rejects(admission.admit(1.5, signal), RangeError);
    await assert.rejects(admission.admit(0, signal), RangeError);
    const ticket = await admission.admit(5, signal);
    await ticket.settle({ delivered: 5 });
  });

  it('an isolated 454 holds the bucket empty briefly, then the full rate; repeated 454s lower the rate', async (t) => {
    const admission = await localAdmission({ rate: 100, burst: 10, throttlePauseMs: 500 });
    t.after(() => admission.stop());
    const signal = new AbortController().signal;
    await sleep(150);
    const first = await admission.admit(1, signal);
    await first.settle({ throttled: 1 });
    const t0 = performance.now();
    const next = await admission.admit(1, signal);
    const held = performance.now() - t0;
    assert.ok(held >= 480, `admitted ${held.toFixed(0)} ms after the 454 (hold 500 ms)`);
    assert.equal(admission.status().effectiveRate, 100, 'isolated: the full rate');
    await next.settle({ throttled: 1 }); // within the hold's debounce: the same event
    assert.equal(admission.status().effectiveRate, 100);
    await sleep(1100);
    const third = await admission.admit(1, signal);
    await third.settle({ throttled: 1 }); // a second event within 10 s: the rate is too high
    assert.ok(Math.abs(admission.status().effectiveRate - 80) < 0.5, `${admission.status().effectiveRate}`);
  });

  it('stop() rejects pending admissions; an aborted wait rejects and gives its slot back', async () => {
    const admission = await localAdmission({ rate: 1, burst: 2, poolSize: 1 });
    const ac = new AbortController();
    const aborted = admission.admit(1, ac.signal);
    ac.abort();
    await assert.rejects(aborted, LimiterUnavailableError);
    const pending = admission.admit(2, new AbortController().signal);
    await sleep(20);
    await admission.stop();
    await assert.rejects(pending, LimiterUnavailableError);
    await assert.rejects(admission.admit(1, new AbortController().signal), LimiterUnavailableError);
    assert.equal(admission.status().available, false);
  });
});
