import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../src/observability/logger';
import { PolicyUnavailableError, type RecipientPolicy } from '../src/policy/policy';
import { Dispatcher } from '../src/egress/dispatcher';
import { LimiterUnavailableError } from '../src/egress/rate/admission-errors';
import type { AdmissionBackend } from '../src/egress/rate/backend';
import { admissionOver } from './helpers/admission';
import { FAKE_REPLIES } from './helpers/fake-ses';
import { startEgress, waitUntil, type EgressHarnessOptions } from './helpers/egress-harness';

type LogLine = Record<string, unknown> & { event?: string; queueId?: string };

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

async function withEgress(options: EgressHarnessOptions, t: { after: (fn: () => Promise<void>) => void }) {
  const log = capture();
  const h = await startEgress({ logger: log.logger, ...options });
  t.after(() => h.close());
  const events = (queueId: string) => log.lines.filter((l) => l.queueId === queueId);
  const waitEvent = (queueId: string, event: string, timeoutMs = 5000) =>
    waitUntil(() => events(queueId).some((l) => l.event === event), timeoutMs, event).then(() =>
      events(queueId).find((l) => l.event === event)!,
    );
  return { h, log, events, waitEvent };
}

describe('Dispatcher: upstream replies', () => {
  it('454 Throttling failure: requeued without counting the attempt, admission reacted', async (t) => {
    const { h, log, waitEvent } = await withEgress({ rate: 100, burst: 10 }, t);
    h.ses.queueData(FAKE_REPLIES.throttling);
    const id = await h.store(['a@example.com', 'b@example.com']);
    const deferred = await waitEvent(id, 'message:deferred');
    assert.equal(deferred.reason, 'throttled-by-ses');
    assert.equal(deferred.code, 454);
    const reaction = log.lines.find((l) => l.event === 'limiter:throttled');
    assert.equal(reaction?.reaction, 'pause', 'an isolated 454: drain and hold, the rate stays');
    assert.equal(h.admission.status().effectiveRate, 100);
    const delivered = await waitEvent(id, 'message:delivered');
    assert.equal(delivered.attempts, 1, 'the throttled attempt did not count');
    assert.deepEqual(
      h.ses.messages.map((m) => m.recipients),
      [['a@example.com', 'b@example.com']],
    );
  });

  for (const [name, answer, reason, code] of [
    ['421 (connection closed)', FAKE_REPLIES.serviceUnavailable, 'upstream-transient', 421],
    ['451 4.4.2', FAKE_REPLIES.temporaryFailure, 'upstream-transient', 451],
    ['network drop mid-DATA', FAKE_REPLIES.drop, 'network', 0],
  ] as const) {
    it(`${name}: deferred, retried on the schedule, delivered later`, async (t) => {
      const { h, waitEvent } = await withEgress({ retryScheduleMs: [100, 200] }, t);
      h.ses.queueData(answer);
      const id = await h.store(['x@example.com']);
      const deferred = await waitEvent(id, 'message:deferred');
      assert.equal(deferred.reason, reason);
      assert.equal(deferred.code, code);
      const delivered = await waitEvent(id, 'message:delivered');
      assert.equal(delivered.attempts, 2, 'the failed attempt counted');
      await h.drained();
      assert.equal(h.ses.messages.length, 1, 'delivered exactly once');
    });
  }

  it('554 Message rejected: failed, kept with the reply', async (t) => {
    const { h, waitEvent } = await withEgress({}, t);
    h.ses.queueData(FAKE_REPLIES.messageRejected);
    const id = await h.store(['x@example.com', 'y@example.com']);
    const failed = await waitEvent(id, 'message:failed');
    assert.equal(failed.code, 554);
    await h.drained();
    const kept = h.spool.listFailed().find((f) => f.id === id);
    assert.ok(kept, 'kept for inspection');
    assert.deepEqual(
      kept.outcomes.map((o) => [o.recipient, o.status, o.code]),
      [
        ['x@example.com', 'failed', 554],
        ['y@example.com', 'failed', 554],
      ],
    );
    assert.match(kept.outcomes[0].reply ?? '', /Message rejected/);
    assert.equal(h.ses.messages.length, 0);
  });

  it('mixed per-recipient replies: each recipient its own outcome', async (t) => {
    const { h, waitEvent } = await withEgress({}, t);
    h.ses.queueRcpt('bad@example.com', FAKE_REPLIES.mailboxUnavailable);
    h.ses.queueRcpt('later@example.com', { code: 450, message: '4.2.0 mailbox busy' });
    const id = await h.store(['ok1@example.com', 'bad@example.com', 'later@example.com', 'ok2@example.com']);
    await waitEvent(id, 'message:failed');
    const delivered = await waitEvent(id, 'message:delivered');
    assert.deepEqual(delivered.rcpts, ['ok1@example.com', 'ok2@example.com']);
    await h.drained();
    const all = h.ses.messages.flatMap((m) => m.recipients).sort();
    assert.deepEqual(
      all,
      ['later@example.com', 'ok1@example.com', 'ok2@example.com'],
      'later@ retried alone',
    );
    const kept = h.spool.listFailed().find((f) => f.id === id)!;
    const by = Object.fromEntries(kept.outcomes.map((o) => [o.recipient, o.status]));
    assert.equal(by['bad@example.com'], 'failed');
    assert.equal(by['ok1@example.com'], 'delivered');
    assert.equal(by['later@example.com'], 'delivered');
  });

  it('expires a message older than the maximum queue age', async (t) => {
    const { h, waitEvent } = await withEgress({ retryScheduleMs: [100], maxQueueAgeMs: 400 }, t);
    h.ses.script((ctx) => (ctx.phase === 'data' ? FAKE_REPLIES.temporaryFailure : undefined));
    const id = await h.store(['x@example.com']);
    const expired = await waitEvent(id, 'message:expired', 5000);
    assert.deepEqual(expired.rcpts, ['x@example.com']);
    await h.drained();
    const kept = h.spool.listFailed().find((f) => f.id === id)!;
    assert.equal(kept.outcomes[0].status, 'expired');
    assert.equal(h.ses.messages.length, 0);
  });

  it('suppressed recipients are not sent; an unavailable policy defers without counting', async (t) => {
    let available = false;
    const policy: RecipientPolicy = {
      async check(recipients) {
        if (!available) throw new PolicyUnavailableError('dynamodb unreachable');
        return {
          allowed: recipients.filter((r) => !r.startsWith('blocked')),
          suppressed: recipients
            .filter((r) => r.startsWith('blocked'))
            .map((r) => ({ recipient: r, matched: r, reason: 'bounce' })),
        };
      },
      healthy: () => available,
      close: async () => {},
    };
    const { h, waitEvent } = await withEgress({ policy, unavailableRetryMs: 100 }, t);
    const id = await h.store(['ok@example.com', 'blocked@example.com']);
    const deferred = await waitEvent(id, 'message:deferred');
    assert.equal(deferred.reason, 'policy-unavailable');
    assert.equal(h.ses.messages.length, 0, 'nothing sent while the policy is unknown');
    available = true;
    const delivered = await waitEvent(id, 'message:delivered');
    assert.equal(delivered.attempts, 1, 'policy outage did not count as an attempt');
    const suppressed = await waitEvent(id, 'message:suppressed');
    assert.deepEqual(suppressed.rcpts, ['blocked@example.com']);
    await h.drained();
    assert.deepEqual(
      h.ses.messages.flatMap((m) => m.recipients),
      ['ok@example.com'],
    );
  });

  it('failOpen sends when the policy is unavailable', async (t) => {
    const policy: RecipientPolicy = {
      check: async () => {
        throw new PolicyUnavailableError('down');
      },
      healthy: () => false,
      close: async () => {},
    };
    const { h } = await withEgress({ policy, failOpen: true }, t);
    await h.store(['x@example.com']);
    await h.drained();
    assert.equal(h.ses.messages.length, 1);
  });

  it('AUTH failure keeps mail queued (transient) and logs loudly', async (t) => {
    const { h, log, waitEvent } = await withEgress({ transportPassword: 'wrong' }, t);
    const id = await h.store(['x@example.com']);
    const deferred = await waitEvent(id, 'message:deferred');
    assert.equal(deferred.code, 535);
    assert.ok(log.lines.some((l) => l.event === 'transport:auth-failed' && l.level === 'error'));
    assert.equal(h.spool.counts().pending, 1);
  });

  it('an unavailable limiter defers without counting, then delivery resumes', async (t) => {
    const { h, log, waitEvent } = await withEgress({ paused: true }, t);
    let up = false;
    // The back end of a shared admission whose Redis is unreachable until `up`.
    const admission = admissionOver((backend) =>
      Object.assign(Object.create(backend) as AdmissionBackend, {
        available: () => up,
        take: (n: number, id: string, probe: boolean) => {
          if (!up) return Promise.reject(new LimiterUnavailableError('redis unreachable'));
          return backend.take(n, id, probe);
        },
      }),
    );
    t.after(() => admission.stop());
    const dispatcher = new Dispatcher({
      spool: h.spool,
      transport: h.transport,
      admission,
      policy: {
        check: async (r) => ({ allowed: r, suppressed: [] }),
        healthy: () => true,
        close: async () => {},
      },
      config: {
        retryScheduleMs: [100],
        maxQueueAgeMs: 3600_000,
        poolSize: 2,
        maxRecipientsPerTransaction: 50,
      },
      logger: log.logger,
      unavailableRetryMs: 100,
    });
    t.after(() => dispatcher.stop(1000));
    dispatcher.start();
    const id = await h.store(['x@example.com']);
    dispatcher.wake();
    const deferred = await waitEvent(id, 'message:deferred');
    assert.equal(deferred.reason, 'limiter-unavailable');
    assert.equal(h.ses.messages.length, 0);
    up = true;
    const delivered = await waitEvent(id, 'message:delivered');
    assert.equal(delivered.attempts, 1);
  });
});
