/**
 * The daily quota over SMTP, in process (real spool, real transport, the fake SES): `454 Throttling
 * failure: Daily message quota exceeded` pauses ALL delivery — no storm of refused attempts (counted at
 * the fake), one probe per SES_QUOTA_PROBE_INTERVAL, attempts not counted, a message older than
 * MAX_QUEUE_AGE minus the pause does not expire — and delivery resumes by itself once the quota is back.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../src/observability/logger';
import { registry } from '../src/observability/metrics';
import { FAKE_REPLIES } from './helpers/fake-ses';
import { startEgress, waitUntil } from './helpers/egress-harness';

type LogLine = Record<string, unknown> & { event?: string; level?: number };

function capture() {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine);
      cb();
    },
  });
  return { lines, logger: createLogger('info', stream) };
}

async function gauge(reason: string): Promise<number> {
  const m = await registry.getSingleMetric('ses_relay_quota_paused')?.get();
  return m?.values.find((v) => v.labels.reason === reason)?.value ?? NaN;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('daily quota over SMTP (in process)', () => {
  it('pauses all delivery, probes once per interval, expires nothing, resumes by itself', async (t) => {
    const log = capture();
    const h = await startEgress({
      logger: log.logger,
      poolSize: 2,
      quotaProbeIntervalMs: 1000,
      maxQueueAgeMs: 2000,
      retryScheduleMs: [100],
    });
    t.after(() => h.close());
    let spent = true;
    const refusedAt: number[] = [];
    h.ses.script((ctx) => {
      if (ctx.phase !== 'data' || !spent) return undefined;
      refusedAt.push(Date.now());
      return FAKE_REPLIES.dailyQuota;
    });
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await h.store([`r${i}@example.com`]));
    await waitUntil(() => log.lines.some((l) => l.event === 'delivery:paused'), 5000, 'delivery:paused');
    const paused = log.lines.find((l) => l.event === 'delivery:paused')!;
    assert.equal(paused.reason, 'daily-quota-exceeded');
    assert.match(String(paused.reply), /Daily message quota exceeded/);
    assert.equal(await gauge('daily-quota-exceeded'), 1);
    assert.equal(await gauge('sending-paused'), 0);
    assert.equal(h.dispatcher.paused, true, '/readyz reports delivery degraded');
    const pausedAt = Date.now();

    // 3.5 s paused, longer than MAX_QUEUE_AGE (2 s): the 2 transactions in flight when SES refused, then
    // one probe per second.
    await sleep(3500);
    const during = refusedAt.length;
    t.diagnostic(`refused attempts: ${during} (pool 2, probes every 1 s for 3.5 s)`);
    assert.ok(during <= 2 + 4, `no storm: ${during} refused attempts`);
    assert.ok(during >= 3, `a probe went out each interval (${during})`);
    const gaps = refusedAt.slice(2).map((at, i, a) => at - (i ? a[i - 1] : pausedAt));
    assert.ok(
      gaps.slice(1).every((g) => g >= 900),
      `probes at least an interval apart: ${gaps.join(', ')} ms`,
    );
    assert.equal(h.ses.messages.length, 0);
    assert.equal(h.spool.counts().pending, 10, 'nothing expired, nothing lost');

    spent = false; // SES's 24-hour window rolled
    await h.drained(5000);
    assert.equal(h.ses.messages.length, 10, 'every message delivered once');
    assert.equal(h.spool.listFailed().length, 0, 'none expired although older than MAX_QUEUE_AGE');
    const delivered = log.lines.filter((l) => l.event === 'message:delivered');
    assert.ok(
      delivered.every((l) => l.attempts === 1),
      'refusals during the pause did not count as attempts',
    );
    const resumed = log.lines.find((l) => l.event === 'delivery:resumed');
    assert.ok(resumed, 'delivery:resumed logged');
    assert.equal(resumed.reason, 'daily-quota-exceeded');
    assert.ok(Number(resumed.pausedMs) >= 3500);
    assert.equal(await gauge('daily-quota-exceeded'), 0);
    assert.equal(h.dispatcher.paused, false);
    assert.ok(ids.length === 10);
  });

  it('a message past MAX_QUEUE_AGE without counting the pause still expires', async (t) => {
    const h = await startEgress({ maxQueueAgeMs: 300, retryScheduleMs: [100], quotaProbeIntervalMs: 1000 });
    t.after(() => h.close());
    h.ses.script((ctx) => (ctx.phase === 'data' ? FAKE_REPLIES.temporaryFailure : undefined));
    await h.store(['x@example.com']);
    await h.drained(5000);
    assert.equal(h.spool.listFailed()[0]?.outcomes[0].status, 'expired');
  });
});
