/**
 * SES_RATE_LIMIT=auto: GetAccount against a local SES v2 endpoint (real SDK), the rate it sets
 * (MaxSendRate × SES_RATE_FRACTION), the loud fallback when the call is denied or fails, a later change of
 * MaxSendRate reaching admission through setRate() — local and Redis-shared — and the gauges.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { AutoRate, SesAccount, sesMaxSendRate } from '../src/egress/rate/ses-account';
import type { Admission } from '../src/egress/rate/admission';
import { limiterRate } from '../src/egress/rate/admission-metrics';
import { createAdmission } from '../src/egress/rate/admission-factory';
import { localAdmission, settings } from './helpers/admission';
import { silentLogger, type Logger } from '../src/observability/logger';
import { FAKE_API_ERRORS, startFakeSesApi, type FakeSesApi } from './helpers/fake-ses-api';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer } from './helpers/redis-server';

const CREDENTIALS = { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' };
const AUTO = { fraction: 1, fallbackRate: 1, refreshMs: 60_000 };

/** A logger that keeps its lines (pino-shaped enough for the code under test). */
function recordingLogger(): { logger: Logger; lines: Array<Record<string, unknown> & { level: string }> } {
  const lines: Array<Record<string, unknown> & { level: string }> = [];
  const at =
    (level: string) =>
    (obj: Record<string, unknown> | string, msg?: string): void =>
      void lines.push(typeof obj === 'string' ? { level, msg: obj } : { ...obj, level, msg });
  const logger = {
    ...silentLogger,
    fatal: at('fatal'),
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    trace: at('trace'),
  } as unknown as Logger;
  return { logger, lines };
}

function account(api: FakeSesApi, logger: Logger = silentLogger, refreshMs = 60_000): SesAccount {
  return new SesAccount({
    region: 'eu-west-1',
    endpoint: api.url,
    credentials: CREDENTIALS,
    refreshMs,
    logger,
  });
}

/** Recipients admitted by `limiter` to a saturating backlog of 1-recipient transactions during `ms`. */
async function granted(limiter: Admission, ms: number): Promise<number> {
  const controller = new AbortController();
  const deadline = performance.now() + ms;
  let n = 0;
  const workers = Array.from({ length: 4 }, async () => {
    for (let i = 0; i < 100_000 && performance.now() < deadline; i++) {
      try {
        const ticket = await limiter.admit(1, controller.signal);
        await ticket.settle({ delivered: 1 });
      } catch {
        return;
      }
      if (performance.now() < deadline) n++;
    }
  });
  await new Promise((r) => setTimeout(r, ms));
  controller.abort();
  await Promise.all(workers);
  return n;
}

async function gauge(g: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await g.get()).values[0]?.value ?? NaN;
}

describe('GetAccount and SES_RATE_LIMIT=auto', () => {
  it('reads SendQuota and runs at MaxSendRate × SES_RATE_FRACTION', async () => {
    const api = await startFakeSesApi({
      account: { MaxSendRate: 40, Max24HourSend: 1000, SentLast24Hours: 7 },
    });
    const acc = account(api);
    try {
      const q = await acc.read();
      assert.equal(q.maxSendRate, 40);
      assert.equal(q.max24HourSend, 1000);
      assert.equal(q.sentLast24Hours, 7);
      assert.equal(api.calls.at(-1)?.accessKeyId, 'AKIDTEST', 'signed with the given credentials');
      const auto = new AutoRate(acc, { ...AUTO, fraction: 0.5 }, silentLogger);
      assert.equal(await auto.initialRate(), 20);
      assert.equal(await gauge(sesMaxSendRate), 40);
      auto.stop();
    } finally {
      acc.stop();
      await api.close();
    }
  });

  for (const [what, answer] of [
    ['denied (AccessDeniedException)', FAKE_API_ERRORS.accessDenied],
    ['failing (500)', FAKE_API_ERRORS.internal],
    ['unreachable (connection dropped)', FAKE_API_ERRORS.drop],
  ] as const) {
    it(`falls back to SES_RATE_FALLBACK with a loud warning when GetAccount is ${what}`, async () => {
      const api = await startFakeSesApi({ account: { MaxSendRate: 40 } });
      api.queueAccount(answer);
      const { logger, lines } = recordingLogger();
      const acc = account(api, logger);
      try {
        const auto = new AutoRate(acc, { ...AUTO, fallbackRate: 3 }, logger);
        assert.equal(await auto.initialRate(), 3);
        const warn = lines.find((l) => l.event === 'limiter:auto-rate-fallback');
        assert.ok(warn && warn.level === 'warn', 'a warning names the fallback');
        assert.match(String(warn.msg), /SES_RATE_FALLBACK=3/);
        const why = lines.find((l) => l.event === 'ses:account-unreadable');
        assert.equal(why?.denied, what.startsWith('denied'));
        if (what.startsWith('denied')) assert.match(String(why?.msg), /ses:GetAccount/);
        auto.stop();
      } finally {
        acc.stop();
        await api.close();
      }
    });
  }

  it('an answer without a usable MaxSendRate is a failed reading, not a rate of 0', async () => {
    const api = await startFakeSesApi({ account: { MaxSendRate: 0 } });
    const acc = account(api);
    try {
      const auto = new AutoRate(acc, AUTO, silentLogger);
      assert.equal(await auto.initialRate(), 1);
      auto.stop();
    } finally {
      acc.stop();
      await api.close();
    }
  });

  it('a new MaxSendRate reaches in-process admission through setRate (grants follow), the gauge too', async () => {
    const api = await startFakeSesApi({ account: { MaxSendRate: 10 } });
    const { logger, lines } = recordingLogger();
    const acc = account(api, logger);
    const auto = new AutoRate(acc, AUTO, logger);
    const rate = await auto.initialRate();
    const limiter = await localAdmission({ rate, burst: 10 });
    try {
      auto.attach(limiter);
      assert.equal(limiter.status().rate, 10);
      const before = await granted(limiter, 1000);
      // The bucket starts empty (no burst after a restart): 1 s at 10/s earns about 10.
      assert.ok(before >= 8 && before <= 10 + 10 + 1, `1 s at 10/s with a burst of 10: ${before}`);
      api.account.MaxSendRate = 40;
      await acc.refresh();
      assert.equal(limiter.status().rate, 40);
      const after = await granted(limiter, 1000);
      // The bucket was emptied by the first backlog: 1 s at 40/s earns 40 (+ at most the burst).
      assert.ok(after >= 30 && after <= 40 + 10 + 1, `1 s at 40/s: ${after}`);
      assert.equal(await gauge(limiterRate), 40);
      assert.ok(lines.some((l) => l.event === 'limiter:auto-rate' && l.rate === 40 && l.before === 10));
      api.account.MaxSendRate = 2;
      await acc.refresh();
      assert.equal(limiter.status().rate, 2);
      assert.ok(
        lines.some((l) => l.event === 'limiter:burst-above-rate'),
        'burst above one second is said',
      );
      // A failed reading later keeps the last rate SES gave (not the fallback).
      api.queueAccount(FAKE_API_ERRORS.internal);
      await acc.refresh();
      assert.equal(limiter.status().rate, 2);
    } finally {
      auto.stop();
      acc.stop();
      await limiter.stop();
      await api.close();
    }
  });

  it('setRate refuses a rate that is not > 0', async () => {
    const limiter = await localAdmission({ rate: 5, burst: 5 });
    try {
      assert.throws(() => limiter.setRate(0), RangeError);
      assert.throws(() => limiter.setRate(Number.NaN), RangeError);
      assert.equal(limiter.status().rate, 5);
    } finally {
      await limiter.stop();
    }
  });

  it('start() refreshes periodically, sooner after a failure', async () => {
    const api = await startFakeSesApi({ account: { MaxSendRate: 10 } });
    const acc = account(api, silentLogger, 200);
    try {
      acc.start();
      await new Promise((r) => setTimeout(r, 900));
      const reads = api.calls.filter((c) => c.operation === 'GetAccount').length;
      assert.ok(reads >= 3 && reads <= 5, `about one reading per 200 ms: ${reads}`);
    } finally {
      acc.stop();
      await api.close();
    }
  });
});

describe('setRate on the Redis-shared admission', () => {
  it('every replica runs at the new rate', async (t) => {
    if (!REDIS_SERVER) return t.skip(REDIS_MISSING);
    const redis = await startRedisServer();
    const make = () =>
      createAdmission(
        settings({ redisUrl: redis.url, limiterId: 'setrate', rate: 10, burst: 10, heartbeatMs: 20 }),
      );
    const a = await make();
    const b = await make();
    try {
      const before = (await Promise.all([granted(a, 1000), granted(b, 1000)])).reduce((x, y) => x + y);
      assert.ok(before <= 10 + 10 + 2, `two replicas share 10/s: ${before}`);
      a.setRate(40);
      b.setRate(40);
      assert.equal(a.status().rate, 40);
      await new Promise((r) => setTimeout(r, 100));
      const after = (await Promise.all([granted(a, 1000), granted(b, 1000)])).reduce((x, y) => x + y);
      assert.ok(after >= 30 && after <= 40 + 10 + 2, `two replicas share 40/s: ${after}`);
    } finally {
      await a.stop();
      await b.stop();
      await redis.close();
    }
  });
});
