/**
 * Admission's fair turn and per-tenant rate_limit (issue 11), in the process and shared through a real
 * redis-server by two replicas. Asserted on grant order and counts, never on speed:
 * - waiting transactions are served in weighted fair order by tenant: a tenant's one transaction behind a
 *   queue of another tenant's 50-recipient transactions is granted after at most one of them;
 * - a tenant at its rate_limit is passed over, never blocking the others, and gets at most
 *   rate_limit × W + bucket in any window, also when two replicas share the limit through Redis.
 */
import assert from 'node:assert/strict';
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import type { Admission } from '../src/egress/rate/admission';
import { createAdmission } from '../src/egress/rate/admission-factory';
import type { Tenant } from '../src/types';
import { localAdmission, settings, sleep } from './helpers/admission';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';

interface TenantGrant {
  tenant: string;
  n: number;
  at: number;
}

/** Keep `parallel` transactions of `n` recipients of `tenant` waiting at `admission` until `until`. */
function keepAsking(
  admission: Admission,
  tenant: Tenant,
  n: number,
  parallel: number,
  until: number,
  grants: TenantGrant[],
  signal: AbortSignal,
): Promise<void[]> {
  return Promise.all(
    Array.from({ length: parallel }, async () => {
      while (performance.now() < until && !signal.aborted) {
        let ticket;
        try {
          ticket = await admission.admit(n, signal, { tenant });
        } catch {
          return;
        }
        grants.push({ tenant: tenant.name, n, at: performance.now() });
        await ticket.settle({ delivered: n });
      }
    }),
  );
}

/**
 * A bulk tenant keeps 8 transactions of 50 waiting at `load` (saturated: each takes 0.5 s of tokens at
 * 100/s); then one single-recipient transaction of another tenant asks at `trickle`. Resolves with how
 * many bulk transactions were granted before it.
 */
async function bulkAheadOfTrickle(load: Admission, trickle: Admission): Promise<number> {
  const abort = new AbortController();
  setMaxListeners(64, abort.signal);
  const grants: TenantGrant[] = [];
  const bulk: Tenant = { name: 'newsletter', priority: 'bulk' };
  const loading = keepAsking(load, bulk, 50, 8, performance.now() + 4000, grants, abort.signal);
  try {
    await sleep(1200);
    const asked = grants.length;
    const ticket = await trickle.admit(1, abort.signal, { tenant: { name: 'shop', priority: 'normal' } });
    const bulkAhead = grants.length - asked;
    await ticket.settle({ delivered: 1 });
    return bulkAhead;
  } finally {
    abort.abort();
    await loading;
  }
}

/**
 * The worst excess over `rate × W + depth` of any stretch of grants (sorted by time), 0 when none exceeds
 * it: grants i..j together must fit `rate × (t_j − t_i) + depth` (the bucket's own bound).
 */
function excessOver(grants: TenantGrant[], rate: number, depth: number): number {
  const sorted = [...grants].sort((a, b) => a.at - b.at);
  let worst = 0;
  for (let i = 0; i < sorted.length; i++) {
    let sum = 0;
    for (let j = i; j < sorted.length; j++) {
      sum += sorted[j].n;
      worst = Math.max(worst, sum - (rate * (sorted[j].at - sorted[i].at)) / 1000 - depth);
    }
  }
  return worst;
}

describe('fair turn (in-process admission)', () => {
  test("a tenant's transaction is not queued behind another tenant's waiting transactions", async () => {
    const admission = await localAdmission({ rate: 100, burst: 50, poolSize: 8 });
    try {
      const bulkAhead = await bulkAheadOfTrickle(admission, admission);
      // Arrival order would put it behind the 7-8 bulk transactions already waiting (3.5 s at this rate).
      assert.ok(bulkAhead <= 1, `${bulkAhead} bulk transactions were granted before the shop's one`);
    } finally {
      await admission.stop();
    }
  });

  test('a tenant at its rate_limit is passed over; it stays within its limit', async () => {
    const admission = await localAdmission({ rate: 200, burst: 20, poolSize: 8 });
    const abort = new AbortController();
    setMaxListeners(64, abort.signal);
    try {
      const grants: TenantGrant[] = [];
      const until = performance.now() + 3000;
      const limited: Tenant = { name: 'limited', priority: 'high', rateLimit: 5 };
      const other: Tenant = { name: 'other', priority: 'bulk' };
      await Promise.all([
        keepAsking(admission, limited, 1, 6, until, grants, abort.signal),
        keepAsking(admission, other, 1, 2, until, grants, abort.signal),
      ]);
      const of = (name: string) => grants.filter((g) => g.tenant === name && g.at <= until);
      // 1 ms of slack for the clock of the two timestamps.
      const excess = excessOver(of('limited'), 5, 5 + 0.01);
      assert.ok(excess <= 0, `the limited tenant exceeded 5/s + 5 by ${excess.toFixed(2)}`);
      assert.ok(
        of('limited').length >= 5 * 2,
        `the limited tenant still got its share: ${of('limited').length}`,
      );
      // The other tenant (weight 1 against 8) gets what the limited one may not use: most of the rate.
      assert.ok(of('other').length >= of('limited').length * 5, `other got only ${of('other').length}`);
    } finally {
      abort.abort();
      await admission.stop();
    }
  });
});

describe(
  'per-tenant rate_limit shared through Redis (real redis-server, two replicas)',
  { skip: REDIS_SERVER ? false : REDIS_MISSING },
  () => {
    let redis: RedisServer;
    before(async () => {
      redis = await startRedisServer();
    });
    after(async () => {
      await redis?.close();
    });

    test('two replicas together keep one tenant within its rate_limit, the other tenant flows', async () => {
      const limiterId = `tenant-${process.pid}-${Date.now()}`;
      const replicas = await Promise.all(
        [0, 1].map(() => createAdmission(settings({ redisUrl: redis.url, limiterId, rate: 200, burst: 20 }))),
      );
      const abort = new AbortController();
      setMaxListeners(64, abort.signal);
      try {
        assert.ok(replicas.every((r) => r.status().available));
        const grants: TenantGrant[] = [];
        const until = performance.now() + 3000;
        const limited: Tenant = { name: 'limited', priority: 'normal', rateLimit: 4 };
        const other: Tenant = { name: 'other', priority: 'normal' };
        await Promise.all(
          replicas.flatMap((r) => [
            keepAsking(r, limited, 1, 4, until, grants, abort.signal),
            keepAsking(r, other, 1, 2, until, grants, abort.signal),
          ]),
        );
        const of = (name: string) => grants.filter((g) => g.tenant === name && g.at <= until);
        const limitedCount = of('limited').length;
        // Grant times are taken in each replica after Redis's answer: allow one recipient of skew.
        const excess = excessOver(of('limited'), 4, 4 + 1);
        assert.ok(excess <= 0, `two replicas exceeded the tenant's 4/s + 4 by ${excess.toFixed(2)}`);
        assert.ok(limitedCount >= 4 * 2, `the limited tenant still got its share: ${limitedCount}`);
        assert.ok(of('other').length >= limitedCount * 5, `other got only ${of('other').length}`);
      } finally {
        abort.abort();
        await Promise.all(replicas.map((r) => r.stop()));
      }
    });

    test('weights hold across replicas: a high tenant on one replica, a bulk tenant on the other, 8:1', async () => {
      const limiterId = `tenant-w-${process.pid}-${Date.now()}`;
      const [a, b] = await Promise.all(
        [0, 1].map(() => createAdmission(settings({ redisUrl: redis.url, limiterId, rate: 100, burst: 10 }))),
      );
      const abort = new AbortController();
      setMaxListeners(64, abort.signal);
      try {
        const grants: TenantGrant[] = [];
        const until = performance.now() + 3000;
        const bulk: Tenant = { name: 'newsletter', priority: 'bulk' };
        const high: Tenant = { name: 'alerts', priority: 'high' };
        // Each replica holds one tenant's mail only: without a shared clock they would split the rate 1:1.
        await Promise.all([
          keepAsking(a, bulk, 2, 4, until, grants, abort.signal),
          keepAsking(b, high, 2, 4, until, grants, abort.signal),
        ]);
        const steady = grants.filter((g) => g.at <= until).slice(10);
        const share = (name: string) =>
          steady.filter((g) => g.tenant === name).reduce((x, g) => x + g.n, 0) /
          steady.reduce((x, g) => x + g.n, 0);
        assert.ok(share('alerts') >= 0.75, `high tenant's share ${share('alerts').toFixed(3)} (8/9 = 0.889)`);
        assert.ok(share('newsletter') >= 0.03, `bulk tenant starved: ${share('newsletter').toFixed(3)}`);
        // Work conserving: together they still get the rate.
        assert.ok(steady.reduce((x, g) => x + g.n, 0) >= 100 * 2, 'the shared rate was used');
      } finally {
        abort.abort();
        await Promise.all([a, b].map((r) => r.stop()));
      }
    });

    test("a tenant's one transaction on another replica goes after at most one of a bulk backlog's", async () => {
      const limiterId = `tenant-t-${process.pid}-${Date.now()}`;
      const [a, b] = await Promise.all(
        [0, 1].map(() => createAdmission(settings({ redisUrl: redis.url, limiterId, rate: 100, burst: 50 }))),
      );
      try {
        const bulkAhead = await bulkAheadOfTrickle(a, b);
        assert.ok(bulkAhead <= 1, `${bulkAhead} bulk transactions were granted before the shop's one`);
      } finally {
        await Promise.all([a, b].map((r) => r.stop()));
      }
    });
  },
);
