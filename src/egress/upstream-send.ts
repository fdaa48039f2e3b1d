/**
 * One upstream transaction as the dispatcher runs it: the transport's send with the delivery metrics
 * around it (in flight, latency, reply codes); a transport that throws (a bug, or an unreadable body)
 * still yields one classified result per recipient, to be retried later.
 */
import { LRUCache } from 'lru-cache';
import type { Logger } from '../observability/logger';
import type { QueuedMessage, Spool } from '../spool/spool';
import { tenantLabel } from '../observability/tenant-label';
import {
  deliveryInFlight,
  tenantQueueWait,
  tenantRecipientsSent,
  upstreamLatency,
  upstreamReplies,
} from './egress-metrics';
import type { RecipientResult, Transport } from './transport/transport';

export async function sendUpstream(
  ctx: { transport: Transport; spool: Spool; logger: Logger },
  m: QueuedMessage,
  recipients: string[],
  firstOfAttempt = false,
): Promise<RecipientResult[]> {
  const tenant = m.reception.tenant;
  deliveryInFlight.inc();
  const t0 = process.hrtime.bigint();
  let results: RecipientResult[];
  try {
    results = await ctx.transport.send({
      id: m.id,
      mailFrom: m.envelope.mailFrom,
      recipients,
      body: () => ctx.spool.openBody(m.id),
      size: m.size,
      ...(tenant?.configurationSet ? { configurationSet: tenant.configurationSet } : {}),
      ...(tenant?.tags && Object.keys(tenant.tags).length ? { tags: tenant.tags } : {}),
    });
  } catch (err) {
    // Transports classify everything; a throw is a bug or an unreadable body: retry later.
    ctx.logger.error({ err, queueId: m.id }, 'transport threw');
    results = recipients.map((recipient) => ({
      recipient,
      class: 'transient' as const,
      code: 0,
      reply: `transport error: ${(err as Error).message}`,
    }));
  } finally {
    deliveryInFlight.dec();
  }
  upstreamLatency.observe(Number(process.hrtime.bigint() - t0) / 1e9);
  for (const code of new Set(results.map((r) => r.code))) upstreamReplies.inc({ code: String(code) });
  observeTenant(m, results, firstOfAttempt);
  return results;
}

/**
 * Messages whose queue wait was observed: a throttled first attempt does not count as an attempt
 * (`attempts` stays 0), so without this its retry would be observed a second time. Bounded; after a
 * restart a message still waiting may be observed once more.
 */
const queueWaitObserved = new LRUCache<string, true>({ max: 100_000 });

/**
 * The per-tenant metrics (bounded label, tenant-label.ts): recipients by SES's answer, and for the first
 * transaction of a message's first attempt its queue wait, acceptance to SES's answer (once per message).
 */
function observeTenant(m: QueuedMessage, results: RecipientResult[], firstOfAttempt: boolean): void {
  const tenant = tenantLabel(m.reception.tenant);
  const byClass = new Map<string, number>();
  for (const r of results) {
    const status = r.code === 0 && r.class !== 'delivered' ? 'network' : r.class;
    byClass.set(status, (byClass.get(status) ?? 0) + 1);
  }
  for (const [status, n] of byClass) tenantRecipientsSent.inc({ tenant, status }, n);
  if (firstOfAttempt && m.attempts === 0 && !queueWaitObserved.has(m.id)) {
    queueWaitObserved.set(m.id, true);
    tenantQueueWait.observe({ tenant }, Math.max(0, Date.now() - m.reception.receivedAt) / 1000);
  }
}
