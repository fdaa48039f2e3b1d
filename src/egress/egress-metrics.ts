/**
 * Delivery metrics, updated by the dispatcher. Message counters count a message once per status it
 * reached in an attempt (a message with one delivered and one failed recipient counts in both).
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';

const p = METRIC_PREFIX;
const registers = [registry];

export const messagesDelivered = new Counter({
  name: `${p}messages_delivered_total`,
  help: 'Messages for which SES (or the outbox) accepted at least one recipient in an attempt',
  registers,
});
export const recipientsDelivered = new Counter({
  name: `${p}recipients_delivered_total`,
  help: 'Recipients accepted by SES (or written to the outbox)',
  registers,
});
export const messagesDeferred = new Counter({
  name: `${p}messages_deferred_total`,
  help: 'Delivery attempts that left recipients queued for a retry, by reason',
  labelNames: ['reason'] as const,
  registers,
});
export const recipientsDeferred = new Counter({
  name: `${p}recipients_deferred_total`,
  help: 'Recipients deferred for a retry, by reason',
  labelNames: ['reason'] as const,
  registers,
});
export const messagesFailed = new Counter({
  name: `${p}messages_failed_total`,
  help: 'Messages with at least one recipient permanently refused by SES (5xx)',
  registers,
});
export const recipientsFailed = new Counter({
  name: `${p}recipients_failed_total`,
  help: 'Recipients permanently refused by SES (5xx)',
  registers,
});
export const recipientsSuppressed = new Counter({
  name: `${p}recipients_suppressed_total`,
  help: 'Recipients not sent to because they are on the suppression list',
  registers,
});
export const messagesExpired = new Counter({
  name: `${p}messages_expired_total`,
  help: 'Messages given up after MAX_QUEUE_AGE without delivery to every recipient',
  registers,
});
export const upstreamReplies = new Counter({
  name: `${p}upstream_replies_total`,
  help: 'SMTP transactions with SES by reply code (0 = network error before a reply)',
  labelNames: ['code'] as const,
  registers,
});
export const upstreamLatency = new Histogram({
  name: `${p}upstream_latency_seconds`,
  help: 'Duration of one SMTP transaction with SES (connection reuse, MAIL..DATA end)',
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers,
});
export const deliveryInFlight = new Gauge({
  name: `${p}delivery_in_flight`,
  help: 'SMTP transactions with SES currently in progress',
  registers,
});
