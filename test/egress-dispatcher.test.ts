import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { registry } from '../src/observability/metrics';
import { registerQueueMetrics } from '../src/egress/queue-metrics';
import { messageBody, startEgress, waitUntil } from './helpers/egress-harness';

const rcpts = (n: number, prefix = 'r') => Array.from({ length: n }, (_, i) => `${prefix}${i}@example.com`);

async function metric(name: string, labels?: Record<string, string>): Promise<number> {
  const m = (await registry.getSingleMetric(name)?.get()) as
    { values: Array<{ value: number; labels: Record<string, string | number> }> } | undefined;
  if (!m) return NaN;
  return m.values
    .filter((v) => !labels || Object.entries(labels).every(([k, x]) => v.labels[k] === x))
    .reduce((s, v) => s + v.value, 0);
}

describe('Dispatcher (fake SES over STARTTLS, real spool)', () => {
  it('delivers a stored message byte for byte and removes it from the spool', async (t) => {
    const h = await startEgress();
    t.after(() => h.close());
    const unregister = registerQueueMetrics(h.spool);
    t.after(unregister);
    const before = await metric('ses_relay_recipients_delivered_total');
    const body = messageBody('happy');
    await h.store(['a@example.com', 'b@example.com'], { body });
    await h.ses.waitFor(1, 5000);
    await h.drained();
    const got = h.ses.messages[0];
    assert.equal(got.body.toString(), body);
    assert.deepEqual(got.recipients, ['a@example.com', 'b@example.com']);
    assert.equal(got.mailFrom, 'sender@example.com');
    assert.equal((await metric('ses_relay_recipients_delivered_total')) - before, 2);
    assert.equal(await metric('ses_relay_queue_messages'), 0);
    assert.equal(h.spool.listFailed().length, 0);
  });

  it('splits 120 recipients into transactions of at most 50', async (t) => {
    const h = await startEgress({ burst: 50 });
    t.after(() => h.close());
    await h.store(rcpts(120));
    await h.drained();
    const sizes = h.ses.messages.map((m) => m.recipients.length).sort((a, b) => b - a);
    assert.deepEqual(sizes, [50, 50, 20]);
    assert.equal(new Set(h.ses.messages.flatMap((m) => m.recipients)).size, 120);
  });

  it('with burst 14 splits into chunks of 14', async (t) => {
    const h = await startEgress({ rate: 1000, burst: 14 });
    t.after(() => h.close());
    await h.store(rcpts(30));
    await h.drained();
    assert.deepEqual(
      h.ses.messages.map((m) => m.recipients.length).sort((a, b) => b - a),
      [14, 14, 2],
    );
  });

  it('reuses pooled connections and recycles them after maxMessagesPerConnection', async (t) => {
    const h = await startEgress({ poolSize: 2, maxMessagesPerConnection: 5 });
    t.after(() => h.close());
    for (let i = 0; i < 30; i++) await h.store([`p${i}@example.com`]);
    await h.drained();
    assert.equal(h.ses.messages.length, 30);
    const perConn = new Map<string, number>();
    for (const m of h.ses.messages) perConn.set(m.connectionId, (perConn.get(m.connectionId) ?? 0) + 1);
    assert.ok(
      [...perConn.values()].every((n) => n <= 5),
      'no connection carried more than 5 messages',
    );
    assert.ok(perConn.size >= 6 && perConn.size <= 10, `connections used: ${perConn.size}`);
  });

  it('holds the rate through the whole path: 200 recipients at 40/s', async (t) => {
    const rate = 40;
    const burst = 10;
    const h = await startEgress({ rate, burst, poolSize: 4, paused: true });
    t.after(() => h.close());
    // A backlog of 1-, 3- and 10-recipient messages.
    const sizes = [1, 3, 10, 1, 3, 2];
    let total = 0;
    for (let i = 0; total < 200; i++) {
      const n = Math.min(sizes[i % sizes.length], 200 - total);
      await h.store(rcpts(n, `m${i}-`));
      total += n;
    }
    await new Promise((r) => setTimeout(r, 300)); // the bucket is full (burst) when we start
    const start = Date.now();
    h.dispatcher.start();
    await h.ses.waitFor(() => h.ses.recipientsReceived() >= 200, 15_000);
    const times = h.ses.messages.map((m) => m.at);
    const elapsed = (Math.max(...times) - start) / 1000;
    // Bound on SES's own acceptance timestamps. Any one-second window is held by the dispatcher's
    // send-time guard (upstream-window.ts) to rate + burst exactly (+1 for the skew between SES's ack and
    // our clock). Other windows: the limiter's bound is exact on grant times; between grant and SES's ack
    // lies the SMTP transaction, slower on a cold connection (TCP + STARTTLS + AUTH), so allow rate x 250 ms.
    const oneSecond = h.ses.maxRecipientsInWindow(1000);
    t.diagnostic(`window 1000 ms: max ${oneSecond}, bound ${burst + rate}`);
    assert.ok(oneSecond <= burst + rate + 1, `window 1000 ms: ${oneSecond} > ${burst + rate}`);
    for (const w of [250, 500, 2000]) {
      const max = h.ses.maxRecipientsInWindow(w);
      const bound = burst + (rate * w) / 1000 + rate * 0.25;
      t.diagnostic(`window ${w} ms: max ${max}, bound ${burst + (rate * w) / 1000}`);
      assert.ok(max <= bound, `window ${w} ms: ${max} > ${bound}`);
    }
    const achieved = (200 - burst) / elapsed;
    t.diagnostic(
      `200 recipients at ${rate}/s: ${elapsed.toFixed(2)} s, ${achieved.toFixed(1)}/s after the burst`,
    );
    assert.ok(achieved >= rate * 0.95, `achieved ${achieved.toFixed(1)}/s`);
    assert.ok(achieved <= rate * 1.05, `too fast: ${achieved.toFixed(1)}/s`);
    assert.equal(h.ses.throttledCount, 0);
  });

  it('stop() lets in-flight transactions finish and releases waiting messages', async (t) => {
    const h = await startEgress({ rate: 2, burst: 2, poolSize: 1 });
    t.after(() => h.close());
    let inData = false;
    h.ses.script((ctx) => {
      if (ctx.phase !== 'data') return undefined;
      inData = true;
      return { delayMs: 300 };
    });
    for (let i = 0; i < 4; i++) await h.store(rcpts(2, `s${i}-`));
    await waitUntil(() => h.dispatcher.inFlight >= 2, 2000, 'deliveries in flight');
    // The limiter starts empty: the first transaction goes once its 2 tokens are earned (1 s at 2/s).
    await waitUntil(() => inData, 3000, 'first transaction inside DATA');
    await h.dispatcher.stop(2000);
    assert.equal(h.ses.messages.length, 1, 'the in-flight transaction finished');
    assert.equal(h.dispatcher.inFlight, 0);
    const c = h.spool.counts();
    assert.equal(c.pending, 3, 'the others stay queued');
    assert.equal(c.sending, 0, 'nothing stays leased');
    // Restart delivery: the rest goes out.
    h.ses.script(undefined);
    h.dispatcher.start();
    await h.drained(10_000);
    assert.equal(h.ses.recipientsReceived(), 8);
  });

  it('stop() past its grace releases a stuck transaction to the spool', async (t) => {
    const h = await startEgress({ poolSize: 1 });
    t.after(() => h.close());
    h.ses.queueData({ delayMs: 1500 });
    await h.store(['slow@example.com']);
    await waitUntil(() => h.dispatcher.inFlight === 1, 2000, 'delivery in flight');
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    await h.dispatcher.stop(200);
    assert.ok(Date.now() - t0 < 1000, 'stop respected its grace');
    assert.equal(h.spool.counts().sending, 0);
    assert.equal(h.spool.counts().pending, 1, 'the message is due again (at-least-once)');
  });
});
