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

/**
 * Per tenant (label `tenant`: tenant-label.ts, the first 100 tenant names, then `other`; at most 101 values):
 * recipients of upstream transactions by SES's answer (`status`: delivered, throttled, transient,
 * permanent, network; at most 5 values), and the queue wait of each message's first attempt.
 */
export const tenantRecipientsSent = new Counter({
  name: `${p}tenant_recipients_sent_total`,
  help: 'Recipients sent to SES per tenant, by SES answer (delivered, throttled, transient, permanent, network)',
  labelNames: ['tenant', 'status'] as const,
  registers,
});
export const tenantQueueWait = new Histogram({
  name: `${p}tenant_queue_wait_seconds`,
  help: "Seconds from a message's acceptance (250 to the client) to SES's answer to its first attempt, per tenant",
  labelNames: ['tenant'] as const,
  buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
  registers,
});
