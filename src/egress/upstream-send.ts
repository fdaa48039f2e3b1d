/**
 * One upstream transaction as the dispatcher runs it: the transport's send with the delivery metrics
 * around it (in flight, latency, reply codes); a transport that throws (a bug, or an unreadable body)
 * still yields one classified result per recipient, to be retried later.
 */
import type { Logger } from '../observability/logger';
import type { QueuedMessage, Spool } from '../spool/spool';
import { deliveryInFlight, upstreamLatency, upstreamReplies } from './egress-metrics';
import type { RecipientResult, Transport } from './transport/transport';

export async function sendUpstream(
  ctx: { transport: Transport; spool: Spool; logger: Logger },
  m: QueuedMessage,
  recipients: string[],
): Promise<RecipientResult[]> {
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
  return results;
}
