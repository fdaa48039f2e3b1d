/**
 * The per-tenant egress metrics (issue 11): recipients by SES's answer, and the queue wait observed ONCE
 * per message — a 454 on the first attempt does not count as an attempt, and its retry must not be
 * observed a second time. Fake SES over STARTTLS, the real dispatcher and SesSmtpTransport.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { registry } from '../src/observability/metrics';
import type { Tenant } from '../src/types';
import { messageBody, startEgress, type EgressHarness } from './helpers/egress-harness';
import { FAKE_REPLIES } from './helpers/fake-ses';

const TENANT: Tenant = { name: 'metrics-tenant', priority: 'normal' };

/** One series' value; a histogram's `_count` is a value of the histogram named without the suffix. */
async function series(name: string, labels: Record<string, string>): Promise<number> {
  const base = name.replace(/_count$/, '');
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === base);
  const values = (metric?.values ?? []) as Array<{
    value: number;
    labels: Record<string, unknown>;
    metricName?: string;
  }>;
  const match = values.find(
    (v) => (v.metricName ?? base) === name && Object.entries(labels).every(([k, val]) => v.labels[k] === val),
  );
  return match?.value ?? 0;
}

let h: EgressHarness;
before(async () => {
  h = await startEgress({ rate: 1000, burst: 50, throttleRetryMs: [50, 100], throttlePauseMs: 10 });
});
after(() => h.close());

test('a message throttled on its first attempt: its queue wait is observed once, each answer counted', async () => {
  h.ses.queueData(FAKE_REPLIES.throttling);
  await h.store(['a@example.com'], { body: messageBody('throttled-first'), tenant: TENANT });
  await h.ses.waitFor(1, 15_000);
  await h.drained(10_000);
  const labels = { tenant: TENANT.name };
  assert.equal(await series('ses_relay_tenant_queue_wait_seconds_count', labels), 1);
  assert.equal(await series('ses_relay_tenant_recipients_sent_total', { ...labels, status: 'throttled' }), 1);
  assert.equal(await series('ses_relay_tenant_recipients_sent_total', { ...labels, status: 'delivered' }), 1);
});
